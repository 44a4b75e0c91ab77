#!/usr/bin/env python3
"""Golden fixtures from llama.cpp (through llama-cpp-python) for tern's reference tests.

For each prompt: the prompt's token ids, the 32 greedy tokens that follow, and the top-5 (id, logit) at the
first 4 generated positions, and at every generated position the top-2 (id, logit) so that tests can tell a
near-tie from a real disagreement. Run: scripts/build-llama-cpp.sh --python && python3 scripts/make-golden.py
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = "model/tests/golden/smollm2-135m-q4_1.json"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, Neil Armstrong",
    "Les élèves français aiment",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
N_GEN = 32
N_TOP_POSITIONS = 4
TOP_K = 5


def main():
    llm = Llama(model_path=MODEL, n_ctx=256, n_threads=2, logits_all=True, verbose=False, seed=0)
    cases = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        generated, tops, top2 = [], [], []
        for step in range(N_GEN):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            if step < N_TOP_POSITIONS:
                order = np.argsort(-logits, kind="stable")[:TOP_K]
                tops.append([[int(i), float(logits[i])] for i in order])
            order2 = np.argsort(-logits, kind="stable")[:2]
            top2.append([[int(i), float(logits[i])] for i in order2])
            tok = int(np.argmax(logits))
            generated.append(tok)
            llm.eval([tok])
        text = llm.detokenize(generated).decode("utf-8", errors="replace")
        cases.append({"prompt": prompt, "prompt_ids": ids, "greedy": generated, "top5": tops, "top2": top2, "text": text})
        print(f"{prompt!r} -> {text!r}", file=sys.stderr)
    import llama_cpp

    out = {
        "model": MODEL.split("/")[-1],
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, CPU, n_ctx 256, default KV cache type",
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
