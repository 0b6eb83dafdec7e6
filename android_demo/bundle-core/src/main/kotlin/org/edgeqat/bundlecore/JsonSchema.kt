package org.edgeqat.bundlecore

import org.json.JSONArray
import org.json.JSONObject

/**
 * The part of JSON Schema (draft 2020-12) that edgeqat's two schemas use, so the app checks a manifest and
 * writes its results against the very files the Python side validates with (core/schemas/manifest.schema.json,
 * runtime_check/schemas/device_results.schema.json) instead of a second copy of their rules. A keyword it
 * does not know is refused when the schema is loaded: a schema change can never be skipped silently.
 */
class JsonSchema(private val root: JSONObject) {
  init {
    checkKeywords(root, "#")
  }

  /** The first violation in document order as "json.path: what is wrong" (the Python side's wording), or null. */
  fun problem(value: Any?): String? = check(root, value, ArrayList())

  private fun check(schema: JSONObject, value: Any?, path: MutableList<Any>): String? {
    val at = { message: String -> "${jsonPath(path).ifEmpty { "the top level" }}: $message" }
    schema.optString("\$ref").takeIf { it.isNotEmpty() }?.let { ref ->
      check(resolve(ref), value, path)?.let { return it }
    }
    if (schema.has("anyOf")) {
      val options = schema.getJSONArray("anyOf").items().map { it as JSONObject }
      if (options.all { check(it, value, ArrayList(path)) != null }) {
        return at("${shown(value)} is not valid under any of the given schemas")
      }
    }
    if (schema.has("const") && !sameJson(schema.get("const"), value)) return at("${shown(schema.get("const"))} was expected")
    if (schema.has("enum")) {
      val options = schema.getJSONArray("enum").items()
      if (options.none { sameJson(it, value) }) return at("${shown(value)} is not one of [${options.joinToString(", ") { shown(it) }}]")
    }
    if (schema.has("type")) {
      val types = schema.get("type").let { if (it is JSONArray) it.items().map { t -> t as String } else listOf(it as String) }
      if (types.none { hasType(value, it) }) {
        return at("${shown(value)} is not of type ${types.joinToString(", ") { "'$it'" }}")
      }
    }
    when {
      value is String -> stringProblem(schema, value, at)?.let { return it }
      isJsonNumber(value) -> numberProblem(schema, (value as Number).toDouble(), value, at)?.let { return it }
      value is JSONArray -> arrayProblem(schema, value, path, at)?.let { return it }
      value is JSONObject -> objectProblem(schema, value, path, at)?.let { return it }
    }
    return null
  }

  private fun stringProblem(schema: JSONObject, value: String, at: (String) -> String): String? {
    if (schema.has("minLength") && value.codePointCount(0, value.length) < schema.getInt("minLength")) {
      return at("${shown(value)} should be non-empty")
    }
    if (schema.has("pattern") && !Regex(schema.getString("pattern")).containsMatchIn(value)) {
      return at(
          if (schema.has("description")) "${shown(value)} is not ${schema.getString("description")}"
          else "${shown(value)} does not match '${schema.getString("pattern")}'")
    }
    return null
  }

  private fun numberProblem(schema: JSONObject, number: Double, value: Any?, at: (String) -> String): String? {
    if (schema.has("minimum") && number < schema.getDouble("minimum")) {
      return at("${shown(value)} is less than the minimum of ${shown(schema.get("minimum"))}")
    }
    if (schema.has("exclusiveMinimum") && number <= schema.getDouble("exclusiveMinimum")) {
      return at("${shown(value)} is less than or equal to the minimum of ${shown(schema.get("exclusiveMinimum"))}")
    }
    return null
  }

  private fun arrayProblem(schema: JSONObject, value: JSONArray, path: MutableList<Any>, at: (String) -> String): String? {
    if (schema.has("minItems") && value.length() < schema.getInt("minItems")) return at("${shown(value)} should be non-empty")
    val items = schema.optJSONObject("items") ?: return null
    for (i in 0 until value.length()) {
      path.add(i)
      check(items, value.opt(i), path)?.let { return it }
      path.removeAt(path.size - 1)
    }
    return null
  }

  private fun objectProblem(schema: JSONObject, value: JSONObject, path: MutableList<Any>, at: (String) -> String): String? {
    schema.optJSONArray("required")?.items()?.map { it as String }?.firstOrNull { !value.has(it) }?.let {
      return "${jsonPath(path + it)} is missing"
    }
    if (schema.has("minProperties") && value.length() < schema.getInt("minProperties")) return at("${shown(value)} should be non-empty")
    val properties = schema.optJSONObject("properties")
    val names = schema.optJSONObject("propertyNames")
    val additional = schema.optJSONObject("additionalProperties")
    for (key in value.keyList()) {
      names?.let { check(it, key, ArrayList(path))?.let { problem -> return problem } }
      val sub = properties?.optJSONObject(key) ?: additional ?: continue
      path.add(key)
      check(sub, value.opt(key), path)?.let { return it }
      path.removeAt(path.size - 1)
    }
    return null
  }

  private fun resolve(ref: String): JSONObject {
    require(ref.startsWith("#/")) { "only local references are supported: $ref" }
    var node: Any = root
    for (part in ref.removePrefix("#/").split('/')) node = (node as JSONObject).get(part)
    return node as JSONObject
  }

  private fun checkKeywords(schema: JSONObject, where: String) {
    for (key in schema.keyList()) {
      require(key in KEYWORDS) { "schema keyword '$key' at $where is not supported by this validator" }
      when (val sub = schema.get(key)) {
        is JSONObject ->
            if (key == "properties" || key == "\$defs") sub.keyList().forEach { checkKeywords(sub.getJSONObject(it), "$where/$key/$it") }
            else if (key != "const") checkKeywords(sub, "$where/$key")
        is JSONArray -> if (key == "anyOf") sub.items().forEach { checkKeywords(it as JSONObject, "$where/$key") }
      }
    }
  }

  companion object {
    private val KEYWORDS =
        setOf(
            "\$schema", "\$ref", "\$defs", "title", "description", "format", "type", "const", "enum", "anyOf",
            "required", "properties", "additionalProperties", "propertyNames", "minProperties",
            "items", "minItems", "minLength", "pattern", "minimum", "exclusiveMinimum")

    fun load(resource: String): JsonSchema {
      val stream = JsonSchema::class.java.getResourceAsStream(resource)
          ?: throw IllegalStateException("schema $resource is not packaged with bundle-core")
      return JsonSchema(JSONObject(stream.use { it.readBytes().toString(Charsets.UTF_8) }))
    }

    private fun hasType(value: Any?, type: String): Boolean =
        when (type) {
          "null" -> value == null || value == JSONObject.NULL
          "boolean" -> value is Boolean
          "string" -> value is String
          "integer" -> isJsonInteger(value)
          "number" -> isJsonNumber(value)
          "array" -> value is JSONArray
          "object" -> value is JSONObject
          else -> throw IllegalArgumentException("unknown JSON type '$type'")
        }

    /** JSON equality: 1 == 1.0, as JSON Schema's const and enum compare. */
    private fun sameJson(a: Any?, b: Any?): Boolean =
        when {
          (a == null || a == JSONObject.NULL) -> b == null || b == JSONObject.NULL
          isJsonNumber(a) && isJsonNumber(b) -> (a as Number).toDouble() == (b as Number).toDouble()
          else -> a == b
        }
  }
}
