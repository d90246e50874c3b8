#!/usr/bin/env python3
"""Runs the official `openai` Python client against a running promptd's OpenAI-compatible API.

    scripts/check_openai.py --base-url http://127.0.0.1:8080/v1 --api-key any --model TASK

Checks models (list, retrieve, an unknown one), completions (one and several prompts, greedy
determinism, usage, logprobs, seeded sampling, the refused fields), streaming completions (the
chunks add up to the non-streamed text, a finish reason, a last usage chunk), chat (the last
user message is the input) and streaming chat, and the error shape. Prints one PASS/FAIL line
per check and "N passed, M failed"; exits 1 if any failed. scripts/openai-clients.sh runs it
(in `make test`) against the tiny fixture model, with the version of `openai` it pins.
"""
import argparse
import re
import sys
import traceback

import openai

# On the tiny fixture's first task (demo-a), PROMPT's greedy answer runs the full 8 tokens and
# OTHER's stops early, so the stream and chat comparisons below compare real text.
PROMPT = "the soup was cold"
OTHER = "kernel time who model"
MAX_TOKENS = 8

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))
    return ok


def run(name, fn):
    """Runs one group of checks; an unexpected exception fails the group by name."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any error is a failed check, reported
        check(name, False, f"{type(e).__name__}: {e}")
        traceback.print_exc(limit=3)


def error_detail(e):
    """The `error` object of an API error (the client keeps it as `body`)."""
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return body if isinstance(body, dict) else {}


def expect_error(name, cls, call, param=None, code=None, mentions=None):
    """`call()` must raise `cls`; its error body has type and message, and `param`/`code`."""
    try:
        r = call()
    except cls as e:
        err = error_detail(e)
        problems = []
        if not isinstance(err.get("type"), str) or not err.get("type"):
            problems.append(f"error.type {err.get('type')!r}")
        if not isinstance(err.get("message"), str) or not err.get("message"):
            problems.append(f"error.message {err.get('message')!r}")
        if code is not None and err.get("code") != code:
            problems.append(f"error.code {err.get('code')!r} != {code!r}")
        if param is not None and err.get("param") != param:
            problems.append(f"error.param {err.get('param')!r} != {param!r}")
        if mentions is not None and not re.search(mentions, err.get("message") or ""):
            problems.append(f"error.message {err.get('message')!r} does not match {mentions!r}")
        check(name, not problems, "; ".join(problems) + f" (body {e.body!r})")
    except openai.APIStatusError as e:
        check(name, False, f"{type(e).__name__} (HTTP {e.status_code}) instead of {cls.__name__}: {e.body!r}")
    else:
        check(name, False, f"no error; answered {r!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="promptd", help="any string on an open server")
    ap.add_argument("--model", required=True, help="a task the key may read")
    args = ap.parse_args()
    task = args.model
    # No retries: a failure must show, not be retried away.
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    print(f"openai {openai.__version__} against {args.base_url}, model {task}")
    greedy = {}

    def models():
        ids = [m.id for m in client.models.list()]
        check("models.list contains the task", task in ids, f"{ids!r}")
        m = client.models.retrieve(task)
        check("models.retrieve(task).id == task", m.id == task, f"{m!r}")
        expect_error("models.retrieve(unknown) -> NotFoundError, model_not_found",
                     openai.NotFoundError, lambda: client.models.retrieve("no-such-model-here"),
                     param="model", code="model_not_found")

    def completions():
        r = client.completions.create(model=task, prompt=PROMPT, max_tokens=MAX_TOKENS)
        ok = (len(r.choices) == 1 and isinstance(r.choices[0].text, str)
              and r.choices[0].finish_reason in ("stop", "length"))
        check("completions: one choice, str text, finish_reason stop|length", ok, f"{r!r}")
        u = r.usage
        check("completions: usage counts tokens",
              u is not None and u.prompt_tokens > 0 and u.completion_tokens > 0
              and u.total_tokens == u.prompt_tokens + u.completion_tokens, f"{u!r}")
        greedy["text"], greedy["usage"] = r.choices[0].text, u
        check("completions: the greedy text is not empty (the comparisons below compare text)",
              r.choices[0].text != "", f"{r.choices[0]!r}")
        again = client.completions.create(model=task, prompt=PROMPT, max_tokens=MAX_TOKENS)
        check("completions: greedy is deterministic", again.choices[0].text == r.choices[0].text,
              f"{again.choices[0].text!r} != {r.choices[0].text!r}")
        two = client.completions.create(model=task, prompt=[PROMPT, OTHER], max_tokens=MAX_TOKENS)
        check("completions: a list of 2 prompts gives choices 0, 1",
              sorted(c.index for c in two.choices) == [0, 1], f"{two.choices!r}")
        first = [c for c in two.choices if c.index == 0]
        check("completions: a prompt's text is the same alone or in a list",
              len(first) == 1 and first[0].text == r.choices[0].text, f"{first!r}")

    def logprobs():
        r = client.completions.create(model=task, prompt=PROMPT, max_tokens=MAX_TOKENS, logprobs=2)
        lp = r.choices[0].logprobs
        if not check("logprobs=2: present", lp is not None and lp.tokens is not None, f"{r.choices[0]!r}"):
            return
        n = len(lp.tokens)
        check("logprobs=2: tokens, token_logprobs, top_logprobs equal lengths",
              n > 0 and len(lp.token_logprobs or []) == n and len(lp.top_logprobs or []) == n,
              f"{len(lp.tokens)}, {len(lp.token_logprobs or [])}, {len(lp.top_logprobs or [])}")
        check("logprobs=2: at most 2 alternatives per token",
              all(len(t) <= 2 for t in lp.top_logprobs or []), f"{lp.top_logprobs!r}")
        values = list(lp.token_logprobs or []) + [v for t in lp.top_logprobs or [] for v in t.values()]
        check("logprobs=2: every log-probability <= 0", all(v <= 0 for v in values), f"{values!r}")

    def sampling():
        kw = dict(model=task, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0, seed=7, n=3)
        a = client.completions.create(**kw)
        check("sampling n=3: 3 choices, index 0..2", sorted(c.index for c in a.choices) == [0, 1, 2],
              f"{a.choices!r}")
        b = client.completions.create(**kw)
        ta = [c.text for c in sorted(a.choices, key=lambda c: c.index)]
        tb = [c.text for c in sorted(b.choices, key=lambda c: c.index)]
        check("sampling seed=7: the same request gives the same texts", ta == tb, f"{ta!r} != {tb!r}")

    def refused():
        base = dict(model=task, prompt=PROMPT, max_tokens=MAX_TOKENS)
        expect_error("echo=True -> BadRequestError param echo", openai.BadRequestError,
                     lambda: client.completions.create(**base, echo=True), param="echo")
        expect_error("best_of=2 -> BadRequestError param best_of", openai.BadRequestError,
                     lambda: client.completions.create(**base, best_of=2), param="best_of")
        expect_error("suffix -> BadRequestError param suffix", openai.BadRequestError,
                     lambda: client.completions.create(**base, suffix="x"), param="suffix")
        expect_error("n=2 greedy -> BadRequestError naming n", openai.BadRequestError,
                     lambda: client.completions.create(**base, n=2), mentions=r"(^|\W)n(\W|$)")

    def stream():
        chunks = list(client.completions.create(model=task, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                                stream=True, stream_options={"include_usage": True}))
        if not check("stream: chunks arrive", len(chunks) > 1, f"{chunks!r}"):
            return
        text = "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == 0)
        check("stream: the chunks add up to the greedy text", text == greedy.get("text"),
              f"{text!r} != {greedy.get('text')!r}")
        check("stream: every chunk is a text_completion",
              all(c.object == "text_completion" for c in chunks), f"{[c.object for c in chunks]!r}")
        check("stream: a chunk has finish_reason",
              any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks))
        last = chunks[-1]
        u = last.usage
        check("stream: the last chunk has usage and no choices",
              last.choices == [] and u is not None
              and u.total_tokens == u.prompt_tokens + u.completion_tokens, f"{last!r}")
        g = greedy.get("usage")
        check("stream: usage equals the non-streamed usage",
              u is not None and g is not None and (u.prompt_tokens, u.completion_tokens)
              == (g.prompt_tokens, g.completion_tokens), f"{u!r} != {g!r}")

    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": PROMPT}]

    def chat():
        r = client.chat.completions.create(model=task, messages=messages, max_tokens=MAX_TOKENS)
        msg = r.choices[0].message
        check("chat: role assistant", msg.role == "assistant", f"{msg!r}")
        check("chat: content equals the completion of the last user message",
              msg.content == greedy.get("text"), f"{msg.content!r} != {greedy.get('text')!r}")
        check("chat: finish_reason stop|length", r.choices[0].finish_reason in ("stop", "length"),
              f"{r.choices[0]!r}")

    def chat_stream():
        chunks = list(client.chat.completions.create(model=task, messages=messages,
                                                     max_tokens=MAX_TOKENS, stream=True))
        with_choices = [c for c in chunks if c.choices]
        if not check("chat stream: chunks arrive", len(with_choices) > 0, f"{chunks!r}"):
            return
        check("chat stream: every chunk is a chat.completion.chunk",
              all(c.object == "chat.completion.chunk" for c in chunks), f"{[c.object for c in chunks]!r}")
        check("chat stream: the first delta has role assistant",
              with_choices[0].choices[0].delta.role == "assistant", f"{with_choices[0]!r}")
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        check("chat stream: the deltas add up to the greedy text", text == greedy.get("text"),
              f"{text!r} != {greedy.get('text')!r}")
        check("chat stream: a chunk has finish_reason",
              any(c.choices[0].finish_reason in ("stop", "length") for c in with_choices))

    def errors():
        expect_error("chat with an unknown model -> NotFoundError, model_not_found",
                     openai.NotFoundError,
                     lambda: client.chat.completions.create(model="no-such-model-here",
                                                            messages=messages, max_tokens=4),
                     param="model", code="model_not_found")
        expect_error("completions with an unknown model -> NotFoundError", openai.NotFoundError,
                     lambda: client.completions.create(model="no-such-model-here", prompt=PROMPT,
                                                       max_tokens=4),
                     param="model", code="model_not_found")

    # completions first: the stream and chat checks compare against its greedy text.
    for name, fn in [("models", models), ("completions", completions), ("logprobs", logprobs),
                     ("sampling", sampling), ("refused fields", refused),
                     ("streaming completions", stream), ("chat", chat),
                     ("streaming chat", chat_stream), ("error shape", errors)]:
        run(name, fn)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
