package org.edgeqat.bundlecore

import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNull
import org.json.JSONObject

class JsonSchemaTest {
  private val schema = JsonSchema(JSONObject("""
      {"type": "object", "required": ["n", "kind"],
       "properties": {
         "n": {"type": "integer", "minimum": 1},
         "rate": {"${'$'}ref": "#/${'$'}defs/positive"},
         "kind": {"enum": ["a", "b"]},
         "id": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
         "hex": {"type": "string", "pattern": "^[0-9a-f]+${'$'}", "description": "lowercase hex"},
         "list": {"type": "array", "minItems": 1, "items": {"type": ["string", "null"]}}},
       "${'$'}defs": {"positive": {"type": "number", "exclusiveMinimum": 0}}}
      """))

  private fun problem(json: String): String? = schema.problem(JSONObject(json))

  @Test
  fun `a valid document has no problem, integers written with a fraction of zero included`() {
    assertNull(problem("""{"n": 3.0, "kind": "a", "rate": 0.5, "id": null, "hex": "0af", "list": ["x", null]}"""))
  }

  @Test
  fun `each violation names its path as the Python side does`() {
    assertEquals("kind is missing", problem("""{"n": 1}"""))
    assertEquals("n: 0 is less than the minimum of 1", problem("""{"n": 0, "kind": "a"}"""))
    assertEquals("n: 1.5 is not of type 'integer'", problem("""{"n": 1.5, "kind": "a"}"""))
    assertEquals("rate: 0 is less than or equal to the minimum of 0", problem("""{"n": 1, "kind": "a", "rate": 0}"""))
    assertEquals("kind: 'c' is not one of ['a', 'b']", problem("""{"n": 1, "kind": "c"}"""))
    assertEquals("id: 'x' is not valid under any of the given schemas", problem("""{"n": 1, "kind": "a", "id": "x"}"""))
    assertEquals("hex: 'XY' is not lowercase hex", problem("""{"n": 1, "kind": "a", "hex": "XY"}"""))
    assertEquals("list[1]: 3 is not of type 'string', 'null'", problem("""{"n": 1, "kind": "a", "list": ["x", 3]}"""))
    assertEquals("list: [] should be non-empty", problem("""{"n": 1, "kind": "a", "list": []}"""))
    assertEquals("n: True is not of type 'integer'", problem("""{"n": true, "kind": "a"}"""))
    assertContains(schema.problem(org.json.JSONArray("[]"))!!, "the top level")
  }

  @Test
  fun `a keyword the validator does not know is refused when the schema loads`() {
    val e = assertFailsWith<IllegalArgumentException> { JsonSchema(JSONObject("""{"type": "string", "maxLength": 3}""")) }
    assertContains(e.message!!, "maxLength")
  }

  @Test
  fun `the packaged schemas load`() {
    JsonSchema.load("/edgeqat/schemas/manifest.schema.json")
    JsonSchema.load("/edgeqat/schemas/device_results.schema.json")
  }
}
