#!/usr/bin/env python3
"""EleutherAI's lm-evaluation-harness against `frugal serve`, checked against llama.cpp in-process.

What a user of lm-evaluation-harness would run: its `local-completions` model pointed at
`frugal serve` for log-likelihoods, tokenizing through the server's vLLM-style `/tokenize`
endpoints (its "remote" tokenizer backend: no transformers, no Hugging Face hub), and its
`local-chat-completions` model with `apply_chat_template` for the generation task (the default
model is an instruct model); once with `full` and once with a compression policy passed per
request in the `X-Frugal-Policy` header (lm-eval's `header` model argument).

Two small tasks, built here from the State of the Union corpus (`frugal fetch --corpus sotu`),
deterministic from --seed:
  * `frugal_sotu_cloze` (log-likelihood, multiple choice): 48 words of a speech, then the true
    next 6 words against 3 six-word spans from elsewhere in the same speech; metric `acc`.
  * `frugal_passkey` (generation, chat): one user message holding ~250 words of speech with a
    five-digit pass key said once inside, then "What is the pass key? Answer with the number
    only."; greedy, until a newline, 16 tokens at most; metric `exact_match` on the first
    number of the answer.

The reference is the same items scored in-process by llama.cpp (llama-cpp-python from
scripts/peer/install_llamacpp.sh) on the same GGUF, tokenized as lm-eval tokenizes them
(`lm_eval_reference.py`): an implementation that shares no code with ours. The check passes
when lm-eval's `full` accuracy on each task is within --tolerance of the reference's and the
per-item choices agree on at least --min-agreement of the cloze items.

  scripts/server/lm_eval_check.py --policy kivi:bits=4 --out docs/results/server-data/lm_eval.json

Needs: target/release/frugal, the lm-eval venv (created here: .venv-lmeval with
lm_eval[api]==0.4.13) and the peer venv (.venv-peer).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

from serverlib import free_port, start, wait_listening

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LM_EVAL_VERSION = "0.4.13"


def corpus_words(binary, seed):
    """Words of the speeches from 1900 on (modern English), one list per speech."""
    path = subprocess.run([binary, "fetch", "--corpus", "sotu", "--print-path"], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    speeches = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".txt") and int(name[:4]) >= 1900:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                words = f.read().split()
            if len(words) > 600:
                speeches.append(words)
    random.Random(seed).shuffle(speeches)
    return speeches


def make_tasks(speeches, n_cloze, n_passkey, seed, out_dir):
    rng = random.Random(seed)
    cloze = []
    for i in range(n_cloze):
        s = speeches[i % len(speeches)]
        at = rng.randrange(48, len(s) - 6)
        gold = " ".join(s[at:at + 6])
        choices = [gold]
        while len(choices) < 4:
            j = rng.randrange(0, len(s) - 6)
            if abs(j - at) >= 12:
                choices.append(" ".join(s[j:j + 6]))
        order = list(range(4))
        rng.shuffle(order)
        cloze.append({"context": " ".join(s[at - 48:at]),
                      "choices": [choices[k] for k in order], "gold": order.index(0)})
    passkey = []
    for i in range(n_passkey):
        s = speeches[(i + n_cloze) % len(speeches)]
        start = rng.randrange(0, len(s) - 260)
        filler = s[start:start + 250]
        key = str(rng.randrange(10000, 100000))
        depth = rng.randrange(20, 230)
        needle = f"The pass key is {key}. Remember it. {key} is the pass key."
        text = " ".join(filler[:depth]) + " " + needle + " " + " ".join(filler[depth:])
        passkey.append({"context": "Read the document and find the pass key.\n\n" + text
                        + "\n\nWhat is the pass key? Answer with the number only.",
                        "key": key})
    files = {}
    for name, rows in [("cloze", cloze), ("passkey", passkey)]:
        files[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(files[name], "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    with open(os.path.join(out_dir, "frugal_sotu_cloze.yaml"), "w") as f:
        f.write(f"""task: frugal_sotu_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {files['cloze']}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
""")
    with open(os.path.join(out_dir, "frugal_passkey.yaml"), "w") as f:
        f.write(f"""task: frugal_passkey
dataset_path: json
dataset_kwargs:
  data_files:
    test: {files['passkey']}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{key}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  temperature: 0
filter_list:
  - name: first_number
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
""")
    return cloze, passkey


def ensure_lm_eval_venv():
    venv = os.path.join(REPO, ".venv-lmeval")
    py = os.path.join(venv, "bin", "python")
    ok = os.path.exists(py) and subprocess.run(
        [py, "-c", f"import lm_eval, sys; sys.exit(lm_eval.__version__ != '{LM_EVAL_VERSION}')"],
        capture_output=True).returncode == 0
    if not ok:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", f"lm_eval[api]=={LM_EVAL_VERSION}"],
                       check=True)
    return py


LM_EVAL_RUNNER = r"""
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
cfg = json.loads(sys.argv[1])
tm = TaskManager(include_path=cfg["tasks_dir"])
common = {"model": "m", "num_concurrent": cfg["concurrent"], "max_retries": 1,
          "max_length": 2048, "max_gen_toks": 16, "header": {"X-Frugal-Policy": cfg["policy"]}}
seeds = dict(random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
cloze = lm_eval.simple_evaluate(
    model="local-completions",
    model_args={**common, "base_url": cfg["base"] + "/v1/completions",
                "tokenizer_backend": "remote", "tokenized_requests": True},
    tasks=["frugal_sotu_cloze"], task_manager=tm, log_samples=True, **seeds)
chat = lm_eval.simple_evaluate(
    model="local-chat-completions",
    model_args={**common, "base_url": cfg["base"] + "/v1/chat/completions"},
    tasks=["frugal_passkey"], task_manager=tm, log_samples=True, apply_chat_template=True,
    **seeds)
out = {"results": {**cloze["results"], **chat["results"]}, "samples": {}}
for task, samples in list(cloze["samples"].items()) + list(chat["samples"].items()):
    rows = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        if task == "frugal_sotu_cloze":
            lls = [r[0] for r in s["filtered_resps"]]
            rows.append({"doc_id": s["doc_id"], "choice": max(range(len(lls)), key=lls.__getitem__),
                         "logliks": lls, "acc": s["acc"]})
        else:
            rows.append({"doc_id": s["doc_id"], "answer": s["resps"][0][0],
                         "exact_match": s["exact_match"]})
    out["samples"][task] = rows
json.dump(out, open(cfg["out"], "w"))
"""


def run_lm_eval(py, port, policy, tasks_dir, concurrent, out):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cfg = {"base": f"http://127.0.0.1:{port}", "policy": policy,
           "tasks_dir": tasks_dir, "concurrent": concurrent, "out": out}
    t0 = time.time()
    subprocess.run([py, "-c", LM_EVAL_RUNNER, json.dumps(cfg)], check=True, env=env)
    with open(out) as f:
        res = json.load(f)
    res["seconds"] = time.time() - t0
    return res


def served_policy(port, policy):
    """The policy the server reports for a request carrying the header."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps({"model": "m", "prompt": "Hello", "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json", "X-Frugal-Policy": policy})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["frugal"]["policy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/frugal"))
    ap.add_argument("--model", help="GGUF (default: the fetched default model)")
    ap.add_argument("--policy", default="kivi:bits=4", help="the compression policy's run")
    ap.add_argument("--cloze", type=int, default=100, help="cloze items")
    ap.add_argument("--passkeys", type=int, default=20, help="pass-key items")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=4, help="lm-eval's num_concurrent")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="largest |accuracy(lm-eval, full) - accuracy(llama.cpp)| per task")
    ap.add_argument("--min-agreement", type=float, default=0.9,
                    help="least share of cloze items where lm-eval's full and llama.cpp choose alike")
    ap.add_argument("--out", help="write the summary and per-item results here (JSON)")
    args = ap.parse_args()

    model = args.model or subprocess.run([args.binary, "fetch", "--print-path"], check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    work = tempfile.mkdtemp(prefix="frugal-lmeval-")
    cloze, passkey = make_tasks(corpus_words(args.binary, args.seed), args.cloze, args.passkeys,
                                args.seed, work)
    lm_eval_py = ensure_lm_eval_venv()
    peer_py = os.path.join(REPO, ".venv-peer", "bin", "python")
    if not os.path.exists(peer_py):
        subprocess.run([os.path.join(REPO, "scripts/peer/install_llamacpp.sh")], check=True)

    print(f"reference: llama.cpp in-process on {model}", flush=True)
    ref_out = os.path.join(work, "reference.json")
    subprocess.run([peer_py, os.path.join(REPO, "scripts/server/lm_eval_reference.py"), model,
                    os.path.join(work, "cloze.jsonl"), os.path.join(work, "passkey.jsonl"),
                    ref_out, str(args.threads)], check=True)
    with open(ref_out) as f:
        ref = json.load(f)

    port = free_port()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    server = start([args.binary, "--model", model, "--threads", str(args.threads), "serve",
                    "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m",
                    "--max-concurrent", str(args.concurrent)], env)
    runs = {}
    try:
        wait_listening(port, server, "frugal serve")
        for policy in ["full", args.policy]:
            assert served_policy(port, policy) == policy, f"the header did not select {policy}"
            print(f"lm-eval against frugal serve, policy {policy} ...", flush=True)
            runs[policy] = run_lm_eval(lm_eval_py, port, policy, work, args.concurrent,
                                       os.path.join(work, f"lm_eval_{policy}.json"))
    finally:
        server.terminate()
        server.wait(timeout=60)

    def acc(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    ref_cloze = acc(ref["cloze"], "acc")
    ref_pass = acc(ref["passkey"], "exact_match")
    summary = {"model": model, "items": {"cloze": len(cloze), "passkey": len(passkey)},
               "seed": args.seed, "lm_eval_version": LM_EVAL_VERSION,
               "reference": {"engine": "llama.cpp (llama-cpp-python, in-process)",
                             "cloze_acc": ref_cloze, "passkey_exact_match": ref_pass},
               "runs": {}}
    ok = True
    print(f"\n{'run':28s} {'cloze acc':>10s} {'passkey EM':>11s} {'agree w/ ref':>13s} {'s':>6s}")
    print(f"{'llama.cpp in-process':28s} {ref_cloze:10.3f} {ref_pass:11.3f} {'':>13s}")
    for policy, r in runs.items():
        s = r["samples"]
        c = acc(s["frugal_sotu_cloze"], "acc")
        p = acc(s["frugal_passkey"], "exact_match")
        agree = sum(a["choice"] == b["choice"] for a, b in
                    zip(s["frugal_sotu_cloze"], ref["cloze"])) / len(ref["cloze"])
        summary["runs"][policy] = {"cloze_acc": c, "passkey_exact_match": p,
                                   "cloze_agreement_with_reference": agree,
                                   "seconds": r["seconds"], "lm_eval_results": r["results"],
                                   "samples": s}
        print(f"{'lm-eval, ' + policy:28s} {c:10.3f} {p:11.3f} {agree:13.3f} {r['seconds']:6.0f}")
        if policy == "full":
            ok = (abs(c - ref_cloze) <= args.tolerance and abs(p - ref_pass) <= args.tolerance
                  and agree >= args.min_agreement)
    summary["reference"]["samples"] = ref
    summary["check"] = {"tolerance": args.tolerance, "min_agreement": args.min_agreement,
                        "passed": ok}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    if not ok:
        sys.exit("lm-eval's full run disagrees with the in-process reference beyond the bounds")
    print("lm-eval's full run agrees with the in-process reference")


if __name__ == "__main__":
    main()
