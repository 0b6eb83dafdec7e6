package org.edgeqat.bundlecore

import java.io.File
import org.json.JSONArray
import org.json.JSONObject

/** A complete bundle on disk, as `edgeqat export` lays one out, with an arbitrary program (nothing here runs it). */
object TestBundles {
  const val VOCAB = 16

  fun manifestFor(dir: File): JSONObject {
    val files = JSONObject()
    for (name in listOf("model.pte", "tokenizer.json")) files.put(name, sha256(File(dir, name)))
    return JSONObject()
        .put("format", "edgeqat-bundle")
        .put("format_version", 1)
        .put("program", "model.pte")
        .put("tokenizer", "tokenizer.json")
        .put("model", JSONObject().put("architecture", "LlamaForCausalLM").put("model_type", "llama").put("vocab_size", VOCAB)
            .put("bos_id", JSONObject.NULL).put("eos_ids", JSONArray(listOf(2))).put("max_seq_len", 12))
        .put("quantization", JSONObject().put("mode", "qat").put("scheme", "8da4w").put("group_size", 32).put("embedding_bits", 4))
        .put("export", JSONObject().put("method", "forward").put("dynamic_seq_len", true).put("linear_layers", 8).put("linear_layers_delegated", 8))
        .put("golden", JSONArray(listOf(
            JSONObject().put("prompt", "one two").put("prompt_ids", JSONArray(listOf(3, 4))).put("generated_ids", JSONArray(listOf(5, 6, 7)))
                .put("text", "three four five"))))
        .put("versions", JSONObject().put("executorch", "1.4.1"))
        .put("files", files)
  }

  /** A good bundle in [dir]; [edit] changes its manifest before it is written. */
  fun write(dir: File, edit: (JSONObject) -> Unit = {}): File {
    dir.mkdirs()
    File(dir, "model.pte").writeBytes(ByteArray(3000) { (it * 7).toByte() })
    File(dir, "tokenizer.json").writeText("{\"model\": {}}")
    val manifest = manifestFor(dir)
    edit(manifest)
    File(dir, "manifest.json").writeText(manifest.toString(2))
    return dir
  }
}
