// The communesync Android library (package org.communesync): the uniffi-generated Kotlin
// (src/main/kotlin/org/communesync/communesync_ffi.kt, written by scripts/bindings/generate.sh),
// a Flow/coroutines layer, a WorkManager worker, and the engine's .so files for the four ABIs in
// src/main/jniLibs (built by scripts/build-android.sh with cargo-ndk; not in git).
// `./gradlew publishToMavenLocal` (or `publish` with a repository added below) produces
// org.communesync:communesync-android:<VERSION_NAME> as an AAR with jni/<abi>/libcommunesync_ffi.so.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
    `maven-publish`
}

android {
    namespace = "org.communesync"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
        // The ABIs built by scripts/build-android.sh; the build fails if one is missing.
        ndk { abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64", "x86") }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
        // The bindings use java.time (Instant, LocalDate): native from API 26, desugared below.
        // An app with minSdk < 26 enables desugaring too (android/README.md).
        isCoreLibraryDesugaringEnabled = true
    }

    kotlinOptions {
        jvmTarget = "17"
    }

    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")

    packaging {
        // Stored uncompressed and 16 KB-aligned in the APK, loaded in place (no extraction).
        jniLibs.useLegacyPackaging = false
    }

    publishing {
        singleVariant("release") {
            withSourcesJar()
        }
    }
}

dependencies {
    // uniffi's Kotlin calls the engine through JNA; the aar carries JNA's own native parts.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("androidx.work:work-runtime-ktx:2.9.1")
    coreLibraryDesugaring("com.android.tools:desugar_jdk_libs:2.1.3")
    // The stories in src/test run on the host JVM (scripts/test.d/20-bindings.sh runs them with
    // kotlinc + java against a real server; they have a main(), not JUnit tests).
    testImplementation("net.java.dev.jna:jna:5.14.0")
    testImplementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.9.0")
}

// Refuse to publish an AAR without the engine for every ABI.
val checkNativeLibraries by tasks.registering {
    doLast {
        val missing = listOf("arm64-v8a", "armeabi-v7a", "x86_64", "x86").filterNot {
            file("src/main/jniLibs/$it/libcommunesync_ffi.so").exists()
        }
        check(missing.isEmpty()) { "no libcommunesync_ffi.so for $missing: run scripts/build-android.sh" }
    }
}
tasks.matching { it.name == "preReleaseBuild" }.configureEach { dependsOn(checkNativeLibraries) }

publishing {
    publications {
        register<MavenPublication>("release") {
            groupId = property("GROUP") as String
            artifactId = "communesync-android"
            version = property("VERSION_NAME") as String
            afterEvaluate { from(components["release"]) }
            pom {
                name.set("communesync")
                description.set("Offline-first sync engine for commune administration (Kotlin bindings).")
                licenses { license { name.set("Apache-2.0") } }
            }
        }
    }
    // A company repository: uncomment and set the URL and credentials (gradle.properties or env).
    // repositories { maven { name = "internal"; url = uri("https://maven.example.vn/releases") } }
}
