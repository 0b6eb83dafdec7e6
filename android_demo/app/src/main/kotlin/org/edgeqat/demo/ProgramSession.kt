package org.edgeqat.demo

import java.io.Closeable
import org.edgeqat.bundlecore.BenchmarkRun
import org.edgeqat.bundlecore.Bundle
import org.edgeqat.bundlecore.Forward
import org.edgeqat.bundlecore.GoldenResult
import org.edgeqat.bundlecore.peakMemoryMib
import org.edgeqat.bundlecore.selfCheck
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

/**
 * A verified bundle's `.pte` in ExecuTorch's runtime: the raw method for the golden self-check, the LLM runner
 * (LlmModule) for chat and the benchmark. Call from one background thread; [stop] from any thread.
 */
class ProgramSession(private val bundle: Bundle, val threads: Int) : Closeable {
  private var module: Module? = null
  private var llm: LlmModule? = null

  private fun module(): Module =
      module ?: Module.load(bundle.programFile.absolutePath, Module.LOAD_MODE_MMAP, threads).also {
        it.loadMethod(bundle.manifest.method)
        module = it
      }

  private fun llm(): LlmModule {
    llm?.let { return it }
    val created = LlmModule(bundle.programFile.absolutePath, bundle.tokenizerFile.absolutePath, 0f)
    // LlmModule's constructor sizes ExecuTorch's process-wide thread pool to the performant cores - 1; a Module
    // created with an explicit count resizes that same pool, so the runner then runs on `threads`.
    module?.close()
    module = null
    module()
    llm = created
    return created
  }

  /** The manifest's golden prompts through forward(input_ids, cache_position), compared id by id. */
  fun selfCheck(progress: (Int, Int) -> Unit): List<GoldenResult> {
    val m = module()
    val method = bundle.manifest.method
    val forward = Forward { ids, positions ->
      val inputs = Tensor.fromBlob(ids, longArrayOf(1, ids.size.toLong()))
      val cachePosition = Tensor.fromBlob(positions, longArrayOf(positions.size.toLong()))
      m.execute(method, EValue.from(inputs), EValue.from(cachePosition))[0].toTensor().dataAsFloatArray
    }
    return selfCheck(bundle.manifest, forward, progress)
  }

  /**
   * Greedy generation through the LLM runner from a fresh context; [onToken] gets each piece of text. Returns
   * the runner's stats JSON (LlmCallback.onStats). [seqLen] counts the prompt and the new tokens: the 1.4.1
   * runner takes no separate max_new_tokens.
   */
  fun generate(prompt: String, seqLen: Int, onToken: (String) -> Unit): String? {
    val runner = llm()
    runner.resetContext()
    var stats: String? = null
    var error: String? = null
    runner.generate(prompt, seqLen, object : LlmCallback {
      override fun onResult(result: String) = onToken(result)
      override fun onStats(json: String) { stats = json }
      override fun onError(errorCode: Int, message: String) { error = "ExecuTorch error 0x${Integer.toHexString(errorCode)}: $message" }
    }, false, 0f, 0, 0)
    generated = true
    error?.let { throw IllegalStateException(it) }
    return stats
  }

  private var generated = false

  /** One benchmark prompt: generate, then the run's numbers from the runner's own stats (docs/device_results.md). */
  fun benchmark(prompt: String, promptTokens: Int, newTokens: Int): BenchmarkRun {
    val loadsModel = !generated  // the runner loads the program on its first generate; its stats time that
    val stats = generate(prompt, promptTokens + newTokens) {}
        ?: throw IllegalStateException("ExecuTorch's runner reported no stats for the benchmark prompt")
    val peak = peakMemoryMib(java.io.File("/proc/self/status").readText())
    return BenchmarkRun.fromRunnerStats(prompt, stats, peak, loadedModel = loadsModel)
  }

  fun stop() {
    llm?.stop()
  }

  override fun close() {
    llm?.close()
    module?.close()
    llm = null
    module = null
  }
}
