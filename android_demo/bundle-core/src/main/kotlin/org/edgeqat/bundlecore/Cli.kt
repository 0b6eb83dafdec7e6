package org.edgeqat.bundlecore

import java.io.File
import kotlin.system.exitProcess

/**
 * `java -cp ... org.edgeqat.bundlecore.CliKt verify BUNDLE`: the app's bundle verification on a desktop or in a
 * deployment pipeline, before a bundle is pushed to phones. Exit 0 and a summary line, or exit 2 and one line.
 */
fun main(args: Array<String>) {
  if (args.size != 2 || args[0] != "verify") {
    System.err.println("usage: verify BUNDLE_DIR")
    exitProcess(64)
  }
  try {
    val bundle = Bundle.open(File(args[1]))
    val m = bundle.manifest
    println("bundle ${args[1]} verified: ${m.files.size} files, ${m.program} sha256 ${bundle.programSha256}, " +
        "scheme ${m.scheme}, ${m.golden.size} golden prompts")
  } catch (e: BundleException) {
    System.err.println("error: ${e.message}")
    exitProcess(2)
  }
}
