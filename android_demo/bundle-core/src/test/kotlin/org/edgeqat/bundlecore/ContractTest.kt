package org.edgeqat.bundlecore

import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.time.Instant
import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.fail
import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Assumptions.assumeTrue

/**
 * The contract with the Python side, over files it wrote from a real bundle (tests/test_bundle_core.py runs
 * this class with -Dedgeqat.vectors=DIR): the bundles the check accepts and refuses, the real `.pte`'s
 * recorded forward outputs for the golden prompts, the LLM runner's real stats, and results files the check
 * refuses. The results file this writes to DIR/out is then validated and read by `edgeqat check`.
 */
class ContractTest {
  private val vectors: File? = System.getProperty("edgeqat.vectors")?.let(::File)

  private fun dir(): File {
    assumeTrue(vectors != null, "run by tests/test_bundle_core.py, which writes the vectors")
    return vectors!!
  }

  private fun json(name: String): JSONObject = readJsonFile(File(dir(), name), name, "") as JSONObject

  @Test
  fun `bundles are accepted and refused as edgeqat check accepts and refuses them`() {
    val cases = json("bundle_cases.json").getJSONArray("cases")
    for (item in cases.items()) {
      val case = item as JSONObject
      val folder = File(dir(), "bundles/" + case.getString("name"))
      if (case.getBoolean("accepted")) {
        Bundle.open(folder)
      } else {
        val e = assertFailsWith<BundleException>("case ${case.getString("name")} should be refused") { Bundle.open(folder) }
        assertContains(e.message!!, case.getString("names"), message = "case ${case.getString("name")}")
      }
    }
  }

  /** forward() answered by the recorded outputs of the real program, call by call. */
  private class Replay(trace: JSONObject, private val logits: ByteBuffer, private val strict: Boolean) : Forward {
    private val calls = ArrayList<JSONObject>()
    init { for (e in trace.getJSONArray("entries").items()) calls.addAll((e as JSONObject).getJSONArray("calls").items().map { it as JSONObject }) }
    private var next = 0

    override fun logits(inputIds: LongArray, cachePosition: LongArray): FloatArray {
      if (next >= calls.size) fail("the self-check called forward more often than the exporter's protocol does")
      val call = calls[next++]
      if (strict) {
        assertEquals(call.getJSONArray("input_ids").longs().toList(), inputIds.toList(), "input_ids of forward call ${next - 1}")
        assertEquals(call.getJSONArray("cache_position").longs().toList(), cachePosition.toList(), "cache_position of forward call ${next - 1}")
      }
      val out = FloatArray(call.getInt("count"))
      logits.duplicate().order(ByteOrder.LITTLE_ENDIAN).position(call.getInt("offset") * 4).let { it.asFloatBuffer().get(out) }
      return out
    }

    fun allCallsMade() = assertEquals(calls.size, next, "forward calls made")
  }

  private fun replay(name: String, strict: Boolean): List<GoldenResult> {
    val trace = json("$name/trace.json")
    val bytes = RandomAccessFile(File(dir(), "$name/logits.f32"), "r").use { f -> ByteArray(f.length().toInt()).also { f.readFully(it) } }
    val forward = Replay(trace, ByteBuffer.wrap(bytes), strict)
    val manifest = Bundle.open(File(dir(), "bundles/good")).manifest
    val results = selfCheck(manifest, forward)
    forward.allCallsMade()
    trace.getJSONArray("entries").items().forEachIndexed { i, item ->
      val entry = item as JSONObject
      assertEquals(entry.getJSONArray("expected_generated_ids").longs().toList(), results[i].generatedIds.toList(), "$name entry $i ids")
      assertEquals(entry.getInt("expected_matched_ids"), results[i].matchedIds, "$name entry $i matched ids")
    }
    return results
  }

  @Test
  fun `the golden self-check over the real program's outputs gives the ids the Python side decoded`() {
    replay("trace", strict = true)
  }

  @Test
  fun `a changed logit row is a divergence at that id`() {
    replay("trace_tampered", strict = false)
  }

  @Test
  fun `results files the check refuses are refused here too`() {
    DeviceResults.validate(json("results_cases/good.json"))
    for (item in json("results_cases/cases.json").getJSONArray("cases").items()) {
      val case = item as JSONObject
      val e = assertFailsWith<BundleException>(case.getString("file")) { DeviceResults.validate(json("results_cases/" + case.getString("file"))) }
      assertContains(e.message!!, case.getString("names"), message = case.getString("file"))
    }
  }

  @Test
  fun `the results file for the real bundle is written for edgeqat check to read`() {
    val bundle = Bundle.open(File(dir(), "bundles/good"))
    val stats = File(dir(), "runner_stats.json").readText()
    val runs = listOf(
        BenchmarkRun.fromRunnerStats("benchmark prompt", stats, peakMemoryMib(File("/proc/self/status").readText()), loadedModel = true),
        BenchmarkRun.fromRunnerStats("benchmark prompt", stats, null, loadedModel = false))
    val device = DeviceInfo("Google", "Pixel 8 Pro", "Android 15 (API 35)", "Google Tensor G3", 9, 12_884_901_888L)
    val json = DeviceResults.build(Instant.now().toString(), AppInfo("0.1.0", "1.4.1"), device, bundle, 4, runs, replay("trace", strict = true))
    File(dir(), "out").mkdirs()
    DeviceResults.writeAtomically(File(dir(), "out/device_results.json"), json)
  }
}
