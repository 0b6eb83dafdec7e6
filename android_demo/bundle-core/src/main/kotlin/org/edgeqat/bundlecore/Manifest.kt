package org.edgeqat.bundlecore

import org.json.JSONObject

/** One golden prompt: the ids the eager converted model produced, which the `.pte` must reproduce. */
class GoldenEntry(val prompt: String, val promptIds: LongArray, val generatedIds: LongArray, val text: String)

/**
 * A bundle's manifest.json, validated as core/manifest.py validates it: the format and its version first,
 * then the whole schema (the same file), then what a schema cannot say. Every message is one line.
 */
class Manifest private constructor(val json: JSONObject) {
  val program: String = json.getString("program")
  val tokenizer: String = json.getString("tokenizer")
  val vocabSize: Int = json.getJSONObject("model").getInt("vocab_size")
  val maxSeqLen: Int = json.getJSONObject("model").getInt("max_seq_len")
  val method: String = json.getJSONObject("export").getString("method")
  val scheme: String = json.getJSONObject("quantization").getString("scheme")
  /** Every file but manifest.json, by its path inside the bundle, with its sha256. */
  val files: Map<String, String> = json.getJSONObject("files").let { f -> f.keyList().associateWith { f.getString(it) } }
  val golden: List<GoldenEntry> =
      json.getJSONArray("golden").items().map {
        val g = it as JSONObject
        GoldenEntry(g.getString("prompt"), g.getJSONArray("prompt_ids").longs(), g.getJSONArray("generated_ids").longs(), g.getString("text"))
      }

  companion object {
    const val FILE = "manifest.json"
    const val FORMAT = "edgeqat-bundle"
    const val FORMAT_VERSION = 1
    private const val REEXPORT = "re-export the bundle"
    private val schema by lazy { JsonSchema.load("/edgeqat/schemas/manifest.schema.json") }

    fun parse(data: Any): Manifest {
      if (data !is JSONObject || data.opt("format") != FORMAT) {
        throw BundleException("not an edgeqat bundle manifest (format is not '$FORMAT')")
      }
      val version = data.opt("format_version")
      if (isJsonInteger(version)) {
        val v = (version as Number).toLong()
        if (v > FORMAT_VERSION) {
          throw BundleException("bundle format version $v is newer than this app reads ($FORMAT_VERSION); update the app")
        }
        if (v < 1) throw BundleException("bundle format version $v never existed (the first is 1); $REEXPORT")
      }
      val problem = schema.problem(data) ?: consistencyProblem(data)
      if (problem != null) throw BundleException("manifest $problem; $REEXPORT")
      return Manifest(data)
    }

    /** core/manifest.py's _consistency_problem: names that must be listed, ids below the vocabulary, sequences that fit. */
    private fun consistencyProblem(data: JSONObject): String? {
      val files = data.getJSONObject("files")
      for (key in listOf("program", "tokenizer")) {
        if (!files.has(data.getString(key))) return "$key names '${data.getString(key)}' but 'files' does not list it"
      }
      val onnx = data.optJSONObject("onnx")
      for (key in listOf("file", "external_data")) {
        val name = onnx?.opt(key) as? String ?: continue
        if (!files.has(name)) return "onnx.$key names '$name' but 'files' does not list it"
      }
      val model = data.getJSONObject("model")
      val vocab = model.getLong("vocab_size")
      val maxSeqLen = model.getLong("max_seq_len")
      val bos = if (model.isNull("bos_id")) longArrayOf() else longArrayOf(model.getLong("bos_id"))
      for ((where, ids) in listOf("model.bos_id" to bos, "model.eos_ids" to model.getJSONArray("eos_ids").longs())) {
        if (ids.any { it >= vocab }) return "$where: ${ids.max()} is not below vocab_size $vocab"
      }
      data.getJSONArray("golden").items().forEachIndexed { i, item ->
        val g = item as JSONObject
        for (key in listOf("prompt_ids", "generated_ids")) {
          val ids = g.getJSONArray(key).longs()
          if (ids.max() >= vocab) return "golden[$i].$key: ${ids.max()} is not below vocab_size $vocab"
        }
        val prompt = g.getJSONArray("prompt_ids").length()
        val generated = g.getJSONArray("generated_ids").length()
        if (prompt + generated > maxSeqLen) {
          return "golden[$i]: $prompt prompt and $generated generated ids do not fit max_seq_len $maxSeqLen"
        }
      }
      val export = data.getJSONObject("export")
      if (export.getLong("linear_layers_delegated") > export.getLong("linear_layers")) {
        return "export.linear_layers_delegated (${export.getLong("linear_layers_delegated")}) is more than linear_layers (${export.getLong("linear_layers")})"
      }
      return null
    }
  }
}
