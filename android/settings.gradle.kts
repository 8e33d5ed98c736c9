// Lets android/ build on its own (`./gradlew assembleRelease publishToMavenLocal` from android/);
// an app can instead include this directory as a module of its own build. Plugin versions live
// here (the module's build file applies them without versions), as Gradle expects.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
    plugins {
        // AGP 8.5.1+ aligns uncompressed native libraries on 16 KB in the APK (Android 15+ devices
        // with 16 KB pages); the .so files themselves are linked for it by scripts/build-android.sh.
        id("com.android.library") version "8.7.3"
        id("org.jetbrains.kotlin.android") version "2.1.0"
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "communesync-android"
