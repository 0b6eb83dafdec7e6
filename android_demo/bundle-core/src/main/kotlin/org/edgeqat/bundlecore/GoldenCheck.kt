package org.edgeqat.bundlecore

/**
 * The program's method as the app calls it: forward(input_ids int64[1, T], cache_position int64[T]) ->
 * logits float32[1, T, vocab], flattened. On the phone it is ExecuTorch's Module.forward; in the tests, the
 * recorded outputs of the real `.pte`.
 */
fun interface Forward {
  fun logits(inputIds: LongArray, cachePosition: LongArray): FloatArray
}

/** One golden entry replayed on the device: the ids it produced against the ids the exported model made. */
class GoldenResult(val prompt: String, val expectedIds: LongArray, val generatedIds: LongArray) {
  /** Leading ids that agree (the tokens until the first divergence). */
  val matchedIds: Int = expectedIds.zip(generatedIds).takeWhile { (a, b) -> a == b }.size
  val passed: Boolean get() = matchedIds == expectedIds.size && generatedIds.size == expectedIds.size
}

/** Index of the largest value; the first of equal ones, as torch.argmax picks. */
fun argmax(values: FloatArray, from: Int, size: Int): Int {
  var best = from
  for (i in from until from + size) {
    if (values[i].isNaN()) throw BundleException("the program returned NaN logits; the .pte or the runtime is broken")
    if (values[i] > values[best]) best = i
  }
  return best - from
}

/**
 * Greedy decoding through [forward] exactly as the exporter made the golden outputs (core/generation.py
 * greedy): the whole prompt at positions 0..T-1, then one token at a time at its position, the next token
 * being the argmax of the last row. Ids are compared, not text: it needs no tokenizer.
 */
fun replayGolden(entry: GoldenEntry, vocabSize: Int, maxSeqLen: Int, forward: Forward): GoldenResult {
  val prompt = entry.promptIds
  val newTokens = minOf(entry.generatedIds.size, maxSeqLen - prompt.size)
  var logits = forward.logits(prompt, LongArray(prompt.size) { it.toLong() })
  val out = ArrayList<Long>()
  var position = prompt.size.toLong()
  var rows = prompt.size
  while (out.size < newTokens) {
    if (logits.size != rows * vocabSize) {
      throw BundleException(
          "forward returned ${logits.size} logits for $rows tokens; expected $rows x vocab_size $vocabSize (a .pte of another model?)")
    }
    val token = argmax(logits, (rows - 1) * vocabSize, vocabSize).toLong()
    out.add(token)
    if (out.size == newTokens) break
    logits = forward.logits(longArrayOf(token), longArrayOf(position))
    position += 1
    rows = 1
  }
  return GoldenResult(entry.prompt, entry.generatedIds, out.toLongArray())
}

/** Every golden entry of the bundle through [forward], in manifest order. */
fun selfCheck(manifest: Manifest, forward: Forward, progress: (done: Int, total: Int) -> Unit = { _, _ -> }): List<GoldenResult> =
    manifest.golden.mapIndexed { i, entry ->
      replayGolden(entry, manifest.vocabSize, manifest.maxSeqLen, forward).also { progress(i + 1, manifest.golden.size) }
    }
