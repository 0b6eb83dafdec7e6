package org.edgeqat.bundlecore

import java.io.File
import java.nio.ByteBuffer
import java.nio.charset.CharacterCodingException
import java.nio.charset.CodingErrorAction
import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import org.json.JSONTokener

/** A problem with a bundle or a results document, as one line a person can act on. */
class BundleException(message: String) : Exception(message)

/** A JSON path the way the Python side writes one: `golden[0].generated_ids`, `files.model.pte`. */
fun jsonPath(parts: List<Any>): String {
  val text = StringBuilder()
  for (part in parts) {
    if (part is Int) text.append('[').append(part).append(']')
    else text.append(if (text.isEmpty()) "" else ".").append(part)
  }
  return text.toString()
}

/** A JSON value shortened for a message, so the point of the line is never cut off. */
fun shown(value: Any?, limit: Int = 60): String {
  val text =
      when (value) {
        null, JSONObject.NULL -> "None"
        is String -> "'" + value + "'"
        is Boolean -> if (value) "True" else "False"
        else -> value.toString()
      }
  return if (text.length <= limit) text else text.substring(0, limit - 3) + "..."
}

/** Reads a UTF-8 JSON document (strictly: a byte that is not UTF-8 is refused, not replaced). */
fun readJsonFile(file: File, what: String, fix: String): Any {
  val hint = if (fix.isEmpty()) "" else "; $fix"
  if (!file.isFile) throw BundleException("$what $file does not exist$hint")
  val text =
      try {
        Charsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT)
            .decode(ByteBuffer.wrap(file.readBytes()))
            .toString()
      } catch (e: CharacterCodingException) {
        throw BundleException("$what $file is not UTF-8 text$hint")
      }
  return parseJson(text, "$what $file", hint)
}

fun parseJson(text: String, where: String, hint: String = ""): Any {
  try {
    val tokener = JSONTokener(text)
    val value = tokener.nextValue()
    if (tokener.nextClean() != 0.toChar()) throw JSONException("text after the document")
    if (value !is JSONObject && value !is JSONArray) throw JSONException("not an object or an array")
    return value
  } catch (e: JSONException) {
    throw BundleException("$where is not valid JSON (${e.message})$hint")
  }
}

/** True for a JSON integer: 3 and 3.0 alike, as JSON Schema and the Python side count them. */
fun isJsonInteger(value: Any?): Boolean =
    when (value) {
      is Int, is Long -> true
      is Double -> value.isFinite() && value == Math.floor(value) && Math.abs(value) < 9.0e15
      else -> false
    }

fun isJsonNumber(value: Any?): Boolean = value is Number && value !is Boolean && (value !is Double || value.isFinite())

fun JSONArray.items(): List<Any?> = (0 until length()).map { opt(it) }

fun JSONObject.keyList(): List<String> {
  val out = ArrayList<String>()
  val it = keys()
  while (it.hasNext()) out.add(it.next() as String)
  return out
}

fun JSONArray.longs(): LongArray = LongArray(length()) { (get(it) as Number).toLong() }
