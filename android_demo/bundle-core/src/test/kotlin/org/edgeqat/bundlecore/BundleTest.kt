package org.edgeqat.bundlecore

import java.io.File
import java.nio.file.Files
import java.nio.file.Path
import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.io.TempDir

class BundleTest {
  @TempDir lateinit var tmp: Path

  private fun refused(dir: File): String = assertFailsWith<BundleException> { Bundle.open(dir) }.message!!

  @Test
  fun `a good bundle opens with the sha256 of its files`() {
    val dir = TestBundles.write(tmp.resolve("b").toFile())
    val bundle = Bundle.open(dir)
    assertEquals(sha256(File(dir, "model.pte")), bundle.programSha256)
    assertEquals(sha256(File(dir, "manifest.json")), bundle.manifestSha256)
    assertEquals(listOf(5L, 6L, 7L), bundle.manifest.golden[0].generatedIds.toList())
    assertEquals(16, bundle.manifest.vocabSize)
  }

  @Test
  fun `sha256 streams and matches a known digest`() {
    val file = tmp.resolve("abc").toFile().apply { writeText("abc") }
    assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sha256(file))
    val big = tmp.resolve("big").toFile().apply { writeBytes(ByteArray(3 shl 20) { it.toByte() }) }
    val expected = java.security.MessageDigest.getInstance("SHA-256").digest(big.readBytes()).joinToString("") { "%02x".format(it) }
    assertEquals(expected, sha256(big))
  }

  @Test
  fun `a missing file is named`() {
    val dir = TestBundles.write(tmp.resolve("b").toFile())
    File(dir, "tokenizer.json").delete()
    assertContains(refused(dir), "tokenizer.json: missing")
  }

  @Test
  fun `a changed byte is named`() {
    val dir = TestBundles.write(tmp.resolve("b").toFile())
    val pte = File(dir, "model.pte")
    pte.writeBytes(pte.readBytes().also { it[1234] = (it[1234] + 1).toByte() })
    assertContains(refused(dir), "model.pte: sha256 differs")
  }

  @Test
  fun `a path that escapes the folder is refused, relative, absolute or through a link`() {
    val outside = tmp.resolve("outside.txt").toFile().apply { writeText("x") }
    for ((i, name) in listOf("../outside.txt", outside.absolutePath, "link/outside.txt").withIndex()) {
      val dir = TestBundles.write(tmp.resolve("b$i").toFile()) { it.getJSONObject("files").put(name, sha256(outside)) }
      Files.createSymbolicLink(dir.toPath().resolve("link"), tmp)
      assertContains(refused(dir), "$name: path escapes the folder")
    }
  }

  @Test
  fun `a newer format version asks for an update`() {
    val dir = TestBundles.write(tmp.resolve("b").toFile()) { it.put("format_version", 2) }
    assertContains(refused(dir), "bundle format version 2 is newer than this app reads (1)")
  }

  @Test
  fun `manifest problems name their JSON path`() {
    val cases: List<Pair<(JSONObject) -> Any, String>> = listOf(
        { m: JSONObject -> m.getJSONObject("model").remove("vocab_size")!! } to "model.vocab_size is missing",
        { m: JSONObject -> m.getJSONArray("golden").getJSONObject(0).put("generated_ids", JSONArray(listOf(5, 16))) } to
            "golden[0].generated_ids: 16 is not below vocab_size 16",
        { m: JSONObject -> m.getJSONArray("golden").getJSONObject(0).put("generated_ids", JSONArray(List(11) { 5 })) } to
            "golden[0]: 2 prompt and 11 generated ids do not fit max_seq_len 12",
        { m: JSONObject -> m.getJSONObject("files").put("model.pte", "XYZ") } to "files.model.pte: 'XYZ' is not a sha256",
        { m: JSONObject -> m.put("program", "other.pte") } to "program names 'other.pte' but 'files' does not list it",
        { m: JSONObject -> m.getJSONObject("quantization").put("mode", "int4") } to "quantization.mode: 'int4' is not one of",
        { m: JSONObject -> m.getJSONArray("golden").getJSONObject(0).put("prompt_ids", JSONArray()) } to
            "golden[0].prompt_ids: [] should be non-empty",
        { m: JSONObject -> m.put("format", "other") } to "not an edgeqat bundle manifest",
    )
    for ((i, case) in cases.withIndex()) {
      val dir = TestBundles.write(tmp.resolve("b$i").toFile()) { case.first(it) }
      assertContains(refused(dir), case.second)
    }
  }

  @Test
  fun `a manifest that is not JSON or not UTF-8 is one line`() {
    val dir = TestBundles.write(tmp.resolve("b").toFile())
    val manifest = File(dir, "manifest.json")
    manifest.writeText(manifest.readText().dropLast(5))
    assertContains(refused(dir), "is not valid JSON")
    manifest.writeBytes(byteArrayOf('{'.code.toByte(), 0xff.toByte(), '}'.code.toByte()))
    assertContains(refused(dir), "is not UTF-8 text")
  }

  @Test
  fun `a folder without a manifest is not a bundle`() {
    val dir = tmp.resolve("empty").toFile().apply { mkdirs() }
    assertContains(refused(dir), "has no manifest.json")
    assertContains(refused(File(dir, "nothing")), "is not a folder")
  }
}
