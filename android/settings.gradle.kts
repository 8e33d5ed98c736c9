// Lets android/ build on its own (`gradle :assembleRelease` from android/); an app can instead
// include this directory as a module of its own build.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "communesync"
