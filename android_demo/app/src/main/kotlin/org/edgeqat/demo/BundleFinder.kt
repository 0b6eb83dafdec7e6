package org.edgeqat.demo

import android.content.Context
import java.io.File

/**
 * Where the app looks for bundles, as ExecuTorch's LlamaDemo looks for models: a folder pushed with
 * `adb push BUNDLE /data/local/tmp/edgeqat/`, and the app's own external files dir (`.../files/bundles/`).
 */
object BundleFinder {
  val PUSHED = File("/data/local/tmp/edgeqat")

  fun roots(context: Context): List<File> = listOfNotNull(PUSHED, context.getExternalFilesDir("bundles"))

  /** Every folder under a root that holds a manifest.json, by name. Nothing is verified yet. */
  fun find(context: Context): List<File> =
      roots(context)
          .flatMap { root -> root.listFiles()?.filter { File(it, "manifest.json").isFile }.orEmpty() }
          .sortedBy { it.name }
}
