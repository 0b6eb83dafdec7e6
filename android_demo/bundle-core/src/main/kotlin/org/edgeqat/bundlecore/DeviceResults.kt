package org.edgeqat.bundlecore

import java.io.File
import java.io.FileOutputStream
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import org.json.JSONArray
import org.json.JSONObject

/** The app that measured: its platform, version, and the ExecuTorch runtime it links. */
class AppInfo(val appVersion: String, val executorchVersion: String, val platform: String = "android")

/** The device, as docs/device_results.md says to fill it (Android Build.*, ActivityManager). */
class DeviceInfo(
    val manufacturer: String,
    val model: String,
    val osVersion: String,
    val soc: String?,
    val cpuCores: Int,
    val ramBytes: Long,
)

/** One benchmark prompt's numbers, computed from the LLM runner's stats as ExecuTorch's print_report does. */
class BenchmarkRun(
    val prompt: String,
    val promptTokens: Long,
    val generatedTokens: Long,
    val prefillTokensPerS: Double,
    val decodeTokensPerS: Double,
    val timeToFirstTokenMs: Double,
    val peakMemoryMib: Double?,
    val loadTimeMs: Double?,
) {
  companion object {
    /**
     * The run described by [stats], the JSON that ExecuTorch's runner hands to LlmCallback.onStats
     * (extension/llm/runner/stats.h: millisecond timestamps). [loadedModel]: this run loaded the model, so
     * its load time is reported; later runs find it loaded and report null.
     */
    fun fromRunnerStats(prompt: String, stats: String, peakMemoryMib: Double?, loadedModel: Boolean): BenchmarkRun {
      val s = parseJson(stats, "the runner's stats") as? JSONObject ?: throw BundleException("the runner's stats are not a JSON object")
      fun ms(key: String): Double =
          if (s.has(key) && isJsonNumber(s.get(key))) s.getDouble(key) else throw BundleException("the runner's stats have no $key")
      val promptTokens = ms("prompt_tokens").toLong()
      val generatedTokens = ms("generated_tokens").toLong()
      val prefillMs = ms("prompt_eval_end_ms") - ms("inference_start_ms")
      val decodeMs = ms("inference_end_ms") - ms("prompt_eval_end_ms")
      if (promptTokens < 1 || generatedTokens < 1) {
        throw BundleException("the runner reported $promptTokens prompt and $generatedTokens generated tokens; a run needs both")
      }
      for ((what, duration) in listOf("prefill" to prefillMs, "decode" to decodeMs)) {
        if (duration <= 0) {
          throw BundleException("the runner timed the $what at ${duration.toLong()} ms (its clock counts whole milliseconds); " +
              "use a longer benchmark prompt or more new tokens")
        }
      }
      return BenchmarkRun(
          prompt = prompt,
          promptTokens = promptTokens,
          generatedTokens = generatedTokens,
          prefillTokensPerS = promptTokens / (prefillMs / 1000.0),
          decodeTokensPerS = generatedTokens / (decodeMs / 1000.0),
          timeToFirstTokenMs = ms("first_token_ms") - ms("inference_start_ms"),
          peakMemoryMib = peakMemoryMib,
          loadTimeMs = if (loadedModel) ms("model_load_end_ms") - ms("model_load_start_ms") else null,
      )
    }
  }
}

/** Peak resident memory in MiB from the text of /proc/self/status (its VmHWM line, in kB); null without one. */
fun peakMemoryMib(procStatus: String): Double? =
    Regex("^VmHWM:\\s*(\\d+)\\s*kB", RegexOption.MULTILINE).find(procStatus)?.groupValues?.get(1)?.toLong()?.let { it / 1024.0 }

/**
 * The results file `edgeqat check --device-results` reads (runtime_check/schemas/device_results.schema.json,
 * version 2), checked against that schema before it is returned: the app cannot write one the check refuses.
 */
object DeviceResults {
  const val SCHEMA_VERSION = 2
  private val schema by lazy { JsonSchema.load("/edgeqat/schemas/device_results.schema.json") }

  fun build(
      timestamp: String,
      app: AppInfo,
      device: DeviceInfo,
      bundle: Bundle,
      threads: Int,
      runs: List<BenchmarkRun>,
      selfCheck: List<GoldenResult>,
  ): JSONObject {
    val json = JSONObject()
    json.put("schema_version", SCHEMA_VERSION)
    json.put("timestamp", timestamp)
    json.put("app", JSONObject().put("platform", app.platform).put("app_version", app.appVersion).put("executorch_version", app.executorchVersion))
    json.put(
        "device",
        JSONObject()
            .put("manufacturer", device.manufacturer)
            .put("model", device.model)
            .put("os_version", device.osVersion)
            .put("soc", device.soc ?: JSONObject.NULL)
            .put("cpu_cores", device.cpuCores)
            .put("ram_bytes", device.ramBytes))
    json.put("bundle", JSONObject().put("manifest_sha256", bundle.manifestSha256).put("program_sha256", bundle.programSha256))
    json.put("settings", JSONObject().put("threads", threads).put("backend", "xnnpack"))
    json.put("runs", JSONArray(runs.map { run ->
      JSONObject()
          .put("prompt", run.prompt)
          .put("prompt_tokens", run.promptTokens)
          .put("generated_tokens", run.generatedTokens)
          .put("prefill_tokens_per_s", run.prefillTokensPerS)
          .put("decode_tokens_per_s", run.decodeTokensPerS)
          .put("time_to_first_token_ms", run.timeToFirstTokenMs)
          .put("peak_memory_mib", run.peakMemoryMib ?: JSONObject.NULL)
          .put("load_time_ms", run.loadTimeMs ?: JSONObject.NULL)
    }))
    json.put("self_check", JSONArray(selfCheck.map { g ->
      JSONObject()
          .put("prompt", g.prompt)
          .put("total_tokens", g.expectedIds.size)
          .put("generated_ids", JSONArray(g.generatedIds.toList()))
          .put("matched_ids", g.matchedIds)
    }))
    validate(json)
    return json
  }

  /** Refuses a results document edgeqat check would refuse (the schema, then counts that contradict each other). */
  fun validate(data: Any) {
    val version = (data as? JSONObject)?.opt("schema_version")
    if (isJsonInteger(version) && (version as Number).toLong() > SCHEMA_VERSION) {
      throw BundleException("device results: schema_version $version is newer than this app writes ($SCHEMA_VERSION)")
    }
    val problem = schema.problem(data) ?: consistencyProblem(data as JSONObject)
    if (problem != null) throw BundleException("device results: $problem (format: docs/device_results.md)")
  }

  /** runtime_check/device_results.py's _consistency_problem, for version 2. */
  private fun consistencyProblem(data: JSONObject): String? {
    data.getJSONArray("self_check").items().forEachIndexed { i, item ->
      val g = item as JSONObject
      val total = g.getLong("total_tokens")
      val generated = g.getJSONArray("generated_ids").length().toLong()
      val matched = g.getLong("matched_ids")
      if (generated > total) return "self_check[$i].generated_ids holds $generated ids, more than total_tokens ($total)"
      if (matched > generated) return "self_check[$i].matched_ids ($matched) is more than the $generated generated_ids"
    }
    return null
  }

  /** Writes [json] so that a reader sees the old file or the new one, never half of one. */
  fun writeAtomically(file: File, json: JSONObject) {
    val tmp = File.createTempFile(".${file.name}.", ".tmp", file.absoluteFile.parentFile)
    try {
      FileOutputStream(tmp).use { out ->
        out.write((json.toString(2) + "\n").toByteArray(Charsets.UTF_8))
        out.fd.sync()
      }
      Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
    } finally {
      tmp.delete()
    }
  }
}
