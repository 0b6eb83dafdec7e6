package org.edgeqat.bundlecore

import java.io.File
import java.nio.file.Path
import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import org.json.JSONObject
import org.junit.jupiter.api.io.TempDir

class DeviceResultsTest {
  @TempDir lateinit var tmp: Path

  // What ExecuTorch's runner hands to onStats (extension/llm/runner/stats.h stats_to_json_string).
  private val stats = """{"prefill_token_per_sec":400,"decode_token_per_sec":50,"prompt_tokens":20,"generated_tokens":30,
      "model_load_start_ms":1000,"model_load_end_ms":1250,"inference_start_ms":2000,"inference_end_ms":2650,
      "prompt_eval_end_ms":2050,"first_token_ms":2060,"aggregate_sampling_time_ms":3,"SCALING_FACTOR_UNITS_PER_SECOND":1000}"""

  private val app = AppInfo("0.1.0", "1.4.1")
  private val device = DeviceInfo("Google", "Pixel 8 Pro", "Android 15 (API 35)", "Google Tensor G3", 9, 12_000_000_000L)

  @Test
  fun `run numbers are computed from the runner's stats as print_report does`() {
    val run = BenchmarkRun.fromRunnerStats("hello", stats, 512.5, loadedModel = true)
    assertEquals(20L, run.promptTokens)
    assertEquals(400.0, run.prefillTokensPerS, 1e-9)  // 20 tokens / 0.050 s
    assertEquals(50.0, run.decodeTokensPerS, 1e-9)  // 30 tokens / 0.600 s
    assertEquals(60.0, run.timeToFirstTokenMs, 1e-9)
    assertEquals(250.0, run.loadTimeMs!!, 1e-9)
    assertNull(BenchmarkRun.fromRunnerStats("hello", stats, null, loadedModel = false).loadTimeMs)
  }

  @Test
  fun `stats that cannot give a rate are refused with the reason`() {
    val zero = stats.replace("\"prompt_eval_end_ms\":2050", "\"prompt_eval_end_ms\":2000")
    assertContains(assertFailsWith<BundleException> { BenchmarkRun.fromRunnerStats("p", zero, null, false) }.message!!, "timed the prefill at 0 ms")
    val missing = stats.replace("\"first_token_ms\":2060,", "")
    assertContains(assertFailsWith<BundleException> { BenchmarkRun.fromRunnerStats("p", missing, null, false) }.message!!, "no first_token_ms")
  }

  @Test
  fun `peak memory comes from the VmHWM line`() {
    assertEquals(1000.0, peakMemoryMib("Name:\tapp\nVmPeak:\t 9999 kB\nVmHWM:\t  1024000 kB\nVmRSS:\t 5 kB\n")!!, 1e-9)
    assertNull(peakMemoryMib("Name:\tapp\n"))
  }

  @Test
  fun `results are written atomically and validate against the schema`() {
    val bundle = Bundle.open(TestBundles.write(tmp.resolve("b").toFile()))
    val golden = listOf(GoldenResult("one two", longArrayOf(5, 6, 7), longArrayOf(5, 6, 1)))
    val runs = listOf(BenchmarkRun.fromRunnerStats("hello", stats, 512.5, true), BenchmarkRun.fromRunnerStats("hi", stats, 600.0, false))
    val json = DeviceResults.build("2026-12-04T01:02:03.456Z", app, device, bundle, 4, runs, golden)
    val file = tmp.resolve("results.json").toFile()
    DeviceResults.writeAtomically(file, json)
    val back = JSONObject(file.readText())
    DeviceResults.validate(back)
    assertEquals(2, back.getInt("schema_version"))
    assertEquals(bundle.programSha256, back.getJSONObject("bundle").getString("program_sha256"))
    assertEquals(2, back.getJSONArray("self_check").getJSONObject(0).getInt("matched_ids"))
    assertEquals(listOf("results.json"), tmp.toFile().list()!!.filter { it != "b" })  // no temporary left
  }

  @Test
  fun `a wrong document is refused before it is written`() {
    val bundle = Bundle.open(TestBundles.write(tmp.resolve("b").toFile()))
    val run = BenchmarkRun.fromRunnerStats("hello", stats, 512.5, true)
    val e = assertFailsWith<BundleException> { DeviceResults.build("2026-12-04 01:02", app, device, bundle, 4, listOf(run), listOf()) }
    assertContains(e.message!!, "timestamp: '2026-12-04 01:02' is not an RFC 3339 time with a time zone")
    val none = assertFailsWith<BundleException> { DeviceResults.build("2026-12-04T01:02:03Z", app, device, bundle, 4, listOf(), listOf()) }
    assertContains(none.message!!, "runs: [] should be non-empty")
    val good = DeviceResults.build("2026-12-04T01:02:03Z", app, device, bundle, 4, listOf(run), listOf())
    good.put("self_check", org.json.JSONArray().put(JSONObject().put("prompt", "p").put("total_tokens", 2)
        .put("generated_ids", org.json.JSONArray(listOf(1, 2))).put("matched_ids", 3)))
    assertContains(assertFailsWith<BundleException> { DeviceResults.validate(good) }.message!!, "self_check[0].matched_ids (3) is more than the 2 generated_ids")
    assertContains(assertFailsWith<BundleException> { DeviceResults.validate(good.put("schema_version", 3)) }.message!!, "newer")
  }
}
