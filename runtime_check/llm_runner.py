"""Generation through ExecuTorch's C++ LLM runner (the code path the Android and iOS libraries wrap)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeqat.native_output import native_errors


@dataclass
class RunnerResult:
    text: str | None  # None when a generated piece was not UTF-8 on its own (see generate_with_runner)
    prompt_tokens: int
    generated_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    time_to_first_token_ms: int
    stats_json: str  # the runner's stats as it reports them (the apps' LlmCallback.onStats gets the same JSON)


def generate_with_runner(bundle_dir: Path, manifest: dict, prompt: str, new_tokens: int) -> RunnerResult:
    bundle_dir = Path(bundle_dir)
    with native_errors(lambda why: f"ExecuTorch's LLM runner cannot load the bundle: {why}"):
        # imported here: its native library logs as it loads, which is for --debug too
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

        from edgeqat.export.llm_ops import load_kernels

        load_kernels()  # the runner looks the program's ops up in this process's kernel registry
        runner = TextLLMRunner(str(bundle_dir / manifest["program"]), str(bundle_dir / manifest["tokenizer"]))
    pieces: list[str] = []
    stats: list = []
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, echo=False, num_bos=0, num_eos=0)
    failed = lambda why: f"ExecuTorch's LLM runner failed to generate: {why}"  # noqa: E731
    text: str | None
    try:
        # The runner prints its INFO lines, the tokens and its stats to descriptors 1 and 2: for --debug only.
        with native_errors(failed, fds=(1, 2)):
            runner.generate(prompt, config, token_callback=pieces.append, stats_callback=stats.append)
        text = "".join(pieces)
    except UnicodeDecodeError:
        # The binding turns each piece into a str, and a piece that is not UTF-8 by itself (a character split
        # across byte-level tokens) raises: the text is unknown, the stats come from a run without it.
        runner.reset()
        stats.clear()
        with native_errors(failed, fds=(1, 2)):
            runner.generate(prompt, config, token_callback=None, stats_callback=stats.append)
        text = None
    stats_json = stats[-1].to_json_string() if stats else "{}"
    s = json.loads(stats_json)
    ttft = s.get("first_token_ms", 0) - s.get("inference_start_ms", 0)
    return RunnerResult(
        text=text,
        prompt_tokens=s.get("prompt_tokens", 0),
        generated_tokens=s.get("generated_tokens", len(pieces)),
        prefill_tokens_per_s=float(s.get("prefill_token_per_sec", 0.0)),
        decode_tokens_per_s=float(s.get("decode_token_per_sec", 0.0)),
        time_to_first_token_ms=int(ttft),
        stats_json=stats_json,
    )
