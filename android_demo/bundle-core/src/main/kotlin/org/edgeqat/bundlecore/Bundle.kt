package org.edgeqat.bundlecore

import java.io.File
import java.io.FileInputStream
import java.security.MessageDigest

/** sha256 of a file in lowercase hex, read in 1 MiB pieces (a `.pte` can be hundreds of MB). */
fun sha256(file: File): String {
  val digest = MessageDigest.getInstance("SHA-256")
  val buffer = ByteArray(1 shl 20)
  FileInputStream(file).use { input ->
    while (true) {
      val n = input.read(buffer)
      if (n < 0) break
      digest.update(buffer, 0, n)
    }
  }
  return digest.digest().joinToString("") { "%02x".format(it) }
}

/**
 * A bundle folder whose manifest is valid and whose every listed file is present, inside the folder and
 * unchanged. Open it with [Bundle.open] before any native code touches the `.pte`.
 */
class Bundle private constructor(val dir: File, val manifest: Manifest, val manifestSha256: String) {
  val programFile: File get() = File(dir, manifest.program)
  val tokenizerFile: File get() = File(dir, manifest.tokenizer)
  val programSha256: String get() = manifest.files.getValue(manifest.program)

  companion object {
    /** The verified bundle in [dir], or a [BundleException] naming the first file that failed. */
    fun open(dir: File, progress: (name: String) -> Unit = {}): Bundle {
      if (!dir.isDirectory) throw BundleException("bundle $dir is not a folder; give the folder `edgeqat export` wrote")
      val manifestFile = File(dir, Manifest.FILE)
      if (!manifestFile.isFile) throw BundleException("$dir has no ${Manifest.FILE}; is it a bundle made by `edgeqat export`?")
      val manifest = Manifest.parse(readJsonFile(manifestFile, "manifest", "re-export the bundle"))
      val problems = verifyFiles(dir, manifest.files, progress)
      if (problems.isNotEmpty()) throw BundleException("bundle $dir failed verification: ${problems.joinToString("; ")}")
      return Bundle(dir, manifest, sha256(manifestFile))
    }

    /** The problems found (core/artifacts.py verify_files): paths escaping the folder, missing and changed files. */
    fun verifyFiles(dir: File, files: Map<String, String>, progress: (name: String) -> Unit = {}): List<String> {
      val root = dir.canonicalFile
      val problems = ArrayList<String>()
      for ((name, digest) in files) {
        if (name.isEmpty() || name.contains('\u0000')) {
          problems.add("'$name': not a file name")
          continue
        }
        // canonicalFile resolves ".." and symbolic links as Python's resolve() does; File(root, "/x") would
        // not leave root, so an absolute name is refused first.
        val file = File(root, name).canonicalFile
        progress(name)
        when {
          File(name).isAbsolute || !file.path.startsWith(root.path + File.separator) ->
              problems.add("$name: path escapes the folder")
          !file.isFile -> problems.add("$name: missing")
          sha256(file) != digest -> problems.add("$name: sha256 differs from the record (file changed or truncated)")
        }
      }
      return problems
    }
  }
}
