// The communesync Android library (package org.communesync): the uniffi-generated Kotlin
// (src/main/kotlin/org/communesync/communesync_ffi.kt, written by scripts/bindings/generate.sh),
// a Flow/coroutines layer, a WorkManager worker, and the engine's .so files in src/main/jniLibs
// (built by scripts/build-android.sh with cargo-ndk; not in git).
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

android {
    namespace = "org.communesync"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }

    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")
}

dependencies {
    // uniffi's Kotlin calls the engine through JNA; the aar carries JNA's own native parts.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("androidx.work:work-runtime-ktx:2.9.1")
    // The end-to-end story in src/test runs on the host JVM (scripts/test.d/20-bindings.sh runs it
    // with kotlinc + java against a real server; it has a main(), not JUnit tests).
    testImplementation("net.java.dev.jna:jna:5.14.0")
    testImplementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.9.0")
}
