"""The official `openai` client against a running `frugal serve` (started by
openai_client_test.sh). Each check asserts what the server really returned."""
import sys

import openai
from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
failures = []


def check(name, cond, detail=""):
    print(f"{'ok  ' if cond else 'FAIL'} {name}{': ' + str(detail) if detail and not cond else ''}")
    if not cond:
        failures.append(name)


models = client.models.list()
check("models.list names the served model", [m.id for m in models.data] == [model], models)

question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
chat = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0)
text = chat.choices[0].message.content
check("chat returns text", isinstance(text, str) and len(text) > 0, chat)
check("chat role is assistant", chat.choices[0].message.role == "assistant")
check("chat finish_reason", chat.choices[0].finish_reason in ("stop", "length"), chat.choices[0].finish_reason)
u = chat.usage
check("chat usage adds up", u.prompt_tokens > 0 and 0 < u.completion_tokens <= 24
      and u.total_tokens == u.prompt_tokens + u.completion_tokens, u)

pieces, finish, usage = [], None, None
stream = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
for ev in stream:
    if ev.usage is not None:
        usage = ev.usage
    for c in ev.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("streamed chat equals the non-streamed answer (greedy)", "".join(pieces) == text, ("".join(pieces), text))
check("stream sends several chunks", len(pieces) > 1, pieces)
check("stream ends with a finish_reason", finish == chat.choices[0].finish_reason, finish)
check("stream usage chunk", usage is not None and usage.completion_tokens == u.completion_tokens, usage)

comp = client.completions.create(model=model, prompt="The sky is", max_tokens=8, temperature=0)
check("completions returns text", len(comp.choices[0].text) > 0 and comp.usage.completion_tokens <= 8, comp)

long_prompt = "Here is a list of fruits: " + ", ".join(["apple", "banana", "cherry", "grape"] * 40) + ". Summarise:"
full = client.completions.create(model=model, prompt=long_prompt, max_tokens=8, temperature=0,
                                 extra_body={"frugal": {"policy": "full"}})
spec = "streaming:sink=4,window=32"
evict = client.completions.create(model=model, prompt=long_prompt, max_tokens=8, temperature=0,
                                  extra_body={"frugal": {"policy": spec}})
fx, ex = full.model_extra.get("frugal", {}), evict.model_extra.get("frugal", {})
check("policy extension is applied", ex.get("policy") == spec and fx.get("policy") == "full", (fx, ex))
check("streaming policy holds less KV than full", 0 < ex.get("kv_peak_bytes", 0) < fx.get("kv_peak_bytes", 0), (fx, ex))

try:
    client.chat.completions.create(model=model, messages=question, max_tokens=4,
                                   extra_body={"frugal": {"policy": "streaming:window=0"}})
    check("invalid policy is rejected", False, "no error")
except openai.BadRequestError as e:
    check("invalid policy is a 400 naming the knob", e.status_code == 400 and "streaming:window" in str(e), e)

try:
    client.chat.completions.create(model="no-such-model", messages=question, max_tokens=4)
    check("unknown model is rejected", False, "no error")
except openai.NotFoundError as e:
    check("unknown model is a 404", e.status_code == 404 and "no-such-model" in str(e), e)

try:
    client.chat.completions.create(model=model, messages=question, temperature=-1)
    check("negative temperature is rejected", False, "no error")
except openai.BadRequestError as e:
    check("negative temperature is a 400", e.body.get("param") == "temperature", e.body)

lp = client.chat.completions.create(model=model, messages=question, max_tokens=6, temperature=0,
                                    logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
check("chat logprobs: one entry per token, 3 alternatives each, the greedy token first",
      len(content) == lp.usage.completion_tokens
      and all(len(c.top_logprobs) == 3 and abs(c.logprob - c.top_logprobs[0].logprob) < 1e-5
              for c in content), lp.choices[0].logprobs)
many = client.completions.create(model=model, prompt="The sky is", max_tokens=6, temperature=1.0,
                                 seed=3, n=3)
check("n=3 gives three choices", sorted(c.index for c in many.choices) == [0, 1, 2], many)
echo = client.completions.create(model=model, prompt="The sky is blue", max_tokens=1, temperature=0,
                                 logprobs=1, echo=True)
tl = echo.choices[0].logprobs.token_logprobs
check("echo with logprobs scores the prompt (the first token null, then log-probabilities)",
      tl[0] is None and all(x <= 0 for x in tl[1:]) and echo.choices[0].text.startswith("The sky is blue"),
      echo.choices[0].logprobs)

after = client.chat.completions.create(model=model, messages=question, max_tokens=4, temperature=0)
check("server still serves after errors", len(after.choices) == 1)

if failures:
    print(f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1)
print("all openai client checks passed")
