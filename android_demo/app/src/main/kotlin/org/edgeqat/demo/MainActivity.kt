package org.edgeqat.demo

import android.app.Activity
import android.graphics.Typeface
import android.os.Bundle as SavedState
import android.view.View
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import java.io.File
import java.time.Instant
import java.util.concurrent.Executors
import org.edgeqat.bundlecore.BenchmarkRun
import org.edgeqat.bundlecore.Bundle
import org.edgeqat.bundlecore.BundleException
import org.edgeqat.bundlecore.DeviceResults
import org.edgeqat.bundlecore.GoldenResult
import org.pytorch.executorch.ExecutorchRuntimeException

/**
 * A thin screen over bundle-core and ExecuTorch: pick a bundle, verify it, self-check its golden ids, chat,
 * benchmark, and write the results file `edgeqat check --device-results` reads. Every step runs on one
 * background thread; a runtime error is shown as a message, never a crash.
 */
class MainActivity : Activity() {
  private val worker = Executors.newSingleThreadExecutor()
  private lateinit var bundles: Spinner
  private lateinit var threads: Spinner
  private lateinit var prompt: EditText
  private lateinit var output: TextView
  private lateinit var status: TextView
  private var found: List<File> = emptyList()
  private var bundle: Bundle? = null
  private var session: ProgramSession? = null
  private var selfCheck: List<GoldenResult>? = null

  override fun onCreate(savedInstanceState: SavedState?) {
    super.onCreate(savedInstanceState)
    val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(32, 48, 32, 32) }
    fun button(label: String, action: () -> Unit) = Button(this).apply { text = label; setOnClickListener { action() } }
    fun row(vararg views: View) = LinearLayout(this).apply { views.forEach { addView(it) } }
    bundles = Spinner(this)
    threads = Spinner(this).apply {
      adapter = ArrayAdapter(this@MainActivity, android.R.layout.simple_spinner_dropdown_item, THREAD_CHOICES.map { "$it threads" })
      setSelection(THREAD_CHOICES.indexOf(DEFAULT_THREADS))
    }
    prompt = EditText(this).apply { hint = "prompt"; setSingleLine(false) }
    output = TextView(this).apply { typeface = Typeface.MONOSPACE; setTextIsSelectable(true) }
    status = TextView(this)
    column.addView(row(bundles, button("Refresh") { refresh() }))
    column.addView(row(threads, button("Open") { open() }))
    column.addView(row(button("Self-check") { runSelfCheck() }, button("Benchmark") { runBenchmark() }))
    column.addView(prompt)
    column.addView(row(button("Send") { chat() }, button("Stop") { session?.stop() }))
    column.addView(status)
    column.addView(output)
    setContentView(ScrollView(this).apply { addView(column) })
    refresh()
  }

  override fun onDestroy() {
    session?.stop()
    worker.execute { session?.close() }
    worker.shutdown()
    super.onDestroy()
  }

  private fun show(text: String) = runOnUiThread { status.text = text }
  private fun print(text: String) = runOnUiThread { output.append(text) }

  /** Runs [work] on the worker thread; any failure becomes one line on the screen. */
  private fun background(what: String, work: () -> Unit) {
    show("$what...")
    worker.execute {
      try {
        work()
      } catch (e: BundleException) {
        show("$what: ${e.message}")
      } catch (e: ExecutorchRuntimeException) {
        show("$what: ExecuTorch: ${e.message}")
      } catch (e: Exception) {
        show("$what failed: ${e.javaClass.simpleName}: ${e.message}")
      } catch (e: UnsatisfiedLinkError) {
        show("$what: ExecuTorch's native library did not load: ${e.message}")
      }
    }
  }

  private fun refresh() {
    found = BundleFinder.find(this)
    val names = found.map { "${it.name}  (${it.parent})" }.ifEmpty { listOf("no bundles: adb push BUNDLE ${BundleFinder.PUSHED}/") }
    bundles.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, names)
  }

  private fun selectedThreads(): Int = THREAD_CHOICES[threads.selectedItemPosition]

  /** Verifies every file against manifest.json (sha256, streamed) before any native code touches the .pte. */
  private fun open() {
    val dir = found.getOrNull(bundles.selectedItemPosition) ?: return show("no bundle selected")
    val count = selectedThreads()
    background("verifying ${dir.name}") {
      session?.close()
      session = null
      bundle = null
      selfCheck = null
      val opened = Bundle.open(dir) { name -> show("verifying ${dir.name}: $name") }
      bundle = opened
      session = ProgramSession(opened, count)
      val m = opened.manifest
      show("${dir.name} verified: ${m.files.size} files, scheme ${m.scheme}, ${m.golden.size} golden prompts, $count threads")
    }
  }

  private fun requireSession(): ProgramSession = session ?: throw BundleException("open a bundle first")

  private fun runSelfCheck() = background("self-check") {
    val results = requireSession().selfCheck { done, total -> show("self-check: $done of $total golden prompts") }
    selfCheck = results
    val matched = results.sumOf { it.matchedIds }
    val total = results.sumOf { it.expectedIds.size }
    for (r in results) print("golden '${r.prompt}': ${r.matchedIds}/${r.expectedIds.size} ids ${if (r.passed) "match" else "DIFFER"}\n")
    show(if (matched == total) "self-check passed: all $total golden ids reproduced" else "self-check FAILED: $matched of $total golden ids")
  }

  private fun chat() {
    val text = prompt.text.toString()
    if (text.isBlank()) return show("type a prompt")
    output.text = ""
    background("generating") {
      val s = requireSession()
      s.generate(text, bundle!!.manifest.maxSeqLen) { piece -> print(piece) }
      show("done")
    }
  }

  /** The golden prompts (their token counts are in the manifest) as the benchmark; results to the files dir. */
  private fun runBenchmark() = background("benchmark") {
    val s = requireSession()
    val opened = bundle!!
    val checked = selfCheck ?: s.selfCheck { done, total -> show("self-check: $done of $total") }.also { selfCheck = it }
    val runs = ArrayList<BenchmarkRun>()
    for ((i, g) in opened.manifest.golden.withIndex()) {
      show("benchmark: prompt ${i + 1} of ${opened.manifest.golden.size}")
      val newTokens = minOf(BENCHMARK_NEW_TOKENS, opened.manifest.maxSeqLen - g.promptIds.size)
      runs.add(s.benchmark(g.prompt, g.promptIds.size, newTokens))
    }
    val results = DeviceResults.build(Instant.now().toString(), DeviceFacts.app(this), DeviceFacts.device(this), opened,
        s.threads, runs, checked)
    val folder = File(getExternalFilesDir(null), "results").apply { mkdirs() }
    val file = File(folder, "${opened.dir.name}-${s.threads}t-${System.currentTimeMillis()}.json")
    DeviceResults.writeAtomically(file, results)
    for (r in runs) print("prefill %.1f tok/s, decode %.1f tok/s, first token %.0f ms\n".format(r.prefillTokensPerS, r.decodeTokensPerS, r.timeToFirstTokenMs))
    print("\nadb pull ${file.absolutePath}\nedgeqat check BUNDLE --device-results ${file.name}\n")
    show("benchmark written to ${file.name}")
  }

  companion object {
    val THREAD_CHOICES = listOf(1, 2, 4, 6, 8)
    const val DEFAULT_THREADS = 4  // edgeqat check's default: a phone's big cores
    const val BENCHMARK_NEW_TOKENS = 64
  }
}
