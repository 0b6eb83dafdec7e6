plugins {
  id("com.android.application")
  id("org.jetbrains.kotlin.android")
}

android {
  namespace = "org.edgeqat.demo"
  compileSdk = 35

  defaultConfig {
    applicationId = "org.edgeqat.demo"
    minSdk = 26
    targetSdk = 35
    versionCode = 1
    versionName = "0.1.0"
    ndk {
      abiFilters += listOf("arm64-v8a", "x86_64")
    }
  }

  buildTypes {
    release {
      isMinifyEnabled = false
    }
  }

  compileOptions {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
  }

  kotlinOptions {
    jvmTarget = "17"
  }

  packaging {
    // The .pte is mmapped from the bundle folder, never packaged; native libraries stay uncompressed.
    jniLibs.useLegacyPackaging = false
  }
}

dependencies {
  // The runtime that matches the exporter: executorch 1.4.1. Its AAR links XNNPACK, the quantized kernels
  // (embedding_4bit) and the llama:: custom ops (update_cache, custom_sdpa) that edgeqat's .pte uses.
  implementation("org.pytorch:executorch-android:1.4.1")
  implementation(project(":bundle-core"))
}
