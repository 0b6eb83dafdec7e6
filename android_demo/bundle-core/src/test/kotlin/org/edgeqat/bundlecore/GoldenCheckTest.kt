package org.edgeqat.bundlecore

import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue

class GoldenCheckTest {
  private val vocab = 8

  /** A model whose next token is (last token + 1) mod vocab, except where [override] says otherwise. */
  private fun counting(calls: MutableList<Pair<List<Long>, List<Long>>>, override: Map<Long, Long> = emptyMap()) =
      Forward { ids, positions ->
        calls.add(ids.toList() to positions.toList())
        val logits = FloatArray(ids.size * vocab) { -1f }
        for ((row, id) in ids.withIndex()) {
          val position = positions[row]
          logits[row * vocab + (override[position] ?: ((id + 1) % vocab)).toInt()] = 2f
        }
        logits
      }

  @Test
  fun `the golden ids are reproduced by feeding the prompt then one token at a time`() {
    val calls = mutableListOf<Pair<List<Long>, List<Long>>>()
    val result = replayGolden(GoldenEntry("p", longArrayOf(1, 2, 3), longArrayOf(4, 5, 6), "t"), vocab, 16, counting(calls))
    assertTrue(result.passed)
    assertEquals(3, result.matchedIds)
    assertEquals(listOf(listOf(1L, 2L, 3L) to listOf(0L, 1L, 2L), listOf(4L) to listOf(3L), listOf(5L) to listOf(4L)), calls)
  }

  @Test
  fun `a divergence counts the ids before it`() {
    val entry = GoldenEntry("p", longArrayOf(1), longArrayOf(2, 3, 4, 5), "t")
    val result = replayGolden(entry, vocab, 16, counting(mutableListOf(), mapOf(2L to 0L)))  // the token after position 2
    assertEquals(listOf(2L, 3L, 0L, 1L), result.generatedIds.toList())
    assertEquals(2, result.matchedIds)
    assertFalse(result.passed)
  }

  @Test
  fun `decoding stops at max_seq_len as the exporter's does`() {
    val result = replayGolden(GoldenEntry("p", longArrayOf(1, 2), longArrayOf(3, 4, 5), "t"), vocab, 4, counting(mutableListOf()))
    assertEquals(listOf(3L, 4L), result.generatedIds.toList())
    assertFalse(result.passed)
  }

  @Test
  fun `argmax takes the first of equal values, as torch does`() {
    assertEquals(1, argmax(floatArrayOf(0f, 3f, 3f, 1f), 0, 4))
    assertEquals(0, argmax(floatArrayOf(9f, 1f, 5f, 5f), 2, 2))
    assertContains(assertFailsWith<BundleException> { argmax(floatArrayOf(0f, Float.NaN), 0, 2) }.message!!, "NaN")
  }

  @Test
  fun `logits of the wrong size name the expected shape`() {
    val wrong = Forward { ids, _ -> FloatArray(ids.size * (vocab + 1)) }
    val e = assertFailsWith<BundleException> { replayGolden(GoldenEntry("p", longArrayOf(1, 2), longArrayOf(3), "t"), vocab, 16, wrong) }
    assertContains(e.message!!, "forward returned 18 logits for 2 tokens; expected 2 x vocab_size 8")
  }
}
