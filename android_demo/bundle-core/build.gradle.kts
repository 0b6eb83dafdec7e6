// The app's plain-Kotlin core: no Android and no native code, so it is built and tested on the JVM as well
// (android_demo/test-jvm.sh does it without Gradle, in CI).
plugins {
  id("org.jetbrains.kotlin.jvm")
}

kotlin {
  jvmToolchain(17)
}

// The schemas the Python side validates with, packaged as resources: one contract, no second copy.
val schemas by tasks.registering(Copy::class) {
  from("../../core/schemas/manifest.schema.json", "../../runtime_check/schemas/device_results.schema.json")
  into(layout.buildDirectory.dir("generated/schemas/edgeqat/schemas"))
}

sourceSets.main {
  resources.srcDir(layout.buildDirectory.dir("generated/schemas"))
}

tasks.named("processResources") { dependsOn(schemas) }

dependencies {
  // Android has org.json built in; on the JVM, Android's own implementation of it (what Debian's
  // libandroid-json-org-java packages for test-jvm.sh).
  compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
  testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
  testImplementation(kotlin("test-junit5"))
  testImplementation("org.junit.jupiter:junit-jupiter:5.9.2")
  testRuntimeOnly("org.junit.platform:junit-platform-launcher")
}

tasks.test {
  useJUnitPlatform()
}
