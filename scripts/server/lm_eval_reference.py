#!/usr/bin/env python3
"""The reference for lm_eval_check.py: its two tasks scored in-process by llama.cpp.

  lm_eval_reference.py MODEL.gguf cloze.jsonl passkey.jsonl out.json THREADS

Runs in the peer venv (llama-cpp-python). Tokenizes as lm-evaluation-harness does for a causal
model without special tokens: the context's trailing space moves to the continuation, the whole
string is encoded and the continuation is what follows the context's tokens. A choice's score is
the sum of its tokens' log-probabilities (log-softmax of the f32 logits). The pass key question
is one user message through llama.cpp's own chat path (the GGUF's chat template), greedy, cut at
the first newline, 16 tokens at most; its first number is compared with the key.
"""
import json
import re
import sys

import numpy as np
from llama_cpp import Llama


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def main():
    model, cloze_path, passkey_path, out, threads = sys.argv[1:6]
    llm = Llama(model_path=model, n_ctx=2048, n_batch=512, logits_all=True,
                n_threads=int(threads), verbose=False)

    def enc(text):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    cloze = []
    for i, line in enumerate(open(cloze_path)):
        doc = json.loads(line)
        ctx_enc = enc(doc["context"])
        lls = []
        for choice in doc["choices"]:
            whole = enc(doc["context"] + " " + choice)
            cont = whole[len(ctx_enc):]
            llm.reset()
            llm.eval(whole)
            logits = np.array(llm.scores[:len(whole)])
            lp = log_softmax(logits)
            start = len(whole) - len(cont)
            lls.append(float(sum(lp[start - 1 + j, t] for j, t in enumerate(cont))))
        choice = max(range(len(lls)), key=lls.__getitem__)
        cloze.append({"doc_id": i, "choice": choice, "logliks": lls,
                      "acc": float(choice == doc["gold"])})

    passkey = []
    for i, line in enumerate(open(passkey_path)):
        doc = json.loads(line)
        llm.reset()
        r = llm.create_chat_completion([{"role": "user", "content": doc["context"]}],
                                       max_tokens=16, temperature=0.0, stop=["\n"])
        answer = r["choices"][0]["message"]["content"]
        m = re.search(r"(\d+)", answer)
        passkey.append({"doc_id": i, "answer": answer,
                        "exact_match": float(bool(m) and m.group(1) == doc["key"])})

    with open(out, "w") as f:
        json.dump({"cloze": cloze, "passkey": passkey}, f)


if __name__ == "__main__":
    main()
