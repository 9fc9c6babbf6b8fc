"""Validation: every row of the spec's parameter table, below range, above range, wrong
type and null; each error checked for status, param, code and message."""

import math

import pytest

from sampler.errors import RequestError
from sampler.params import INT64_MAX, INT64_MIN, ModelInfo, Request, parse_request
from sampler.tokenizer import get_tokenizer

TOK = get_tokenizer("cl100k_base")
INFO = ModelInfo(
    "m", TOK, context_length=64, end_ids=(100257,), vocab_size=100277, fim=(100258, 100259, 100260)
)
NO_FIM = ModelInfo("m", TOK, context_length=64, end_ids=(100257,), vocab_size=100277)


def body(**fields):
    return {"model": "m", "prompt": "Hello", **fields}


def err(b, info=INFO) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse_request(b, info)
    d = e.value.to_dict()["error"]
    assert set(d) == {"message", "type", "param", "code"}
    assert d["type"] == "invalid_request_error"
    return e.value


def check(b, param, code, message=None, status=400, info=INFO):
    e = err(b, info)
    assert (e.status, e.param, e.code) == (status, param, code), e
    if message is not None:
        assert e.message == message
    return e


def below(param, lo, got, kind):
    return (
        f"Invalid '{param}': {kind} below minimum value. Expected a value >= {lo}, "
        f"but got {got} instead."
    )


def above(param, hi, got, kind):
    return (
        f"Invalid '{param}': {kind} above maximum value. Expected a value <= {hi}, "
        f"but got {got} instead."
    )


def type_msg(param, expected, got):
    return f"Invalid type for '{param}': expected {expected}, but got {got} instead."


# --- numeric rows: (param, lo, hi, kind, default) ------------------------------------------
NUMERIC = [
    ("temperature", 0, 2, "decimal", 1.0),
    ("top_p", 0, 1, "decimal", 1.0),
    ("presence_penalty", -2, 2, "decimal", 0.0),
    ("frequency_penalty", -2, 2, "decimal", 0.0),
    ("n", 1, 128, "integer", 1),
    ("best_of", 1, 20, "integer", None),
    ("logprobs", 0, 5, "integer", None),
    ("seed", INT64_MIN, INT64_MAX, "integer", None),
]


@pytest.mark.parametrize("param,lo,hi,kind,default", NUMERIC)
def test_numeric_below_range(param, lo, hi, kind, default):
    got = lo - 1 if kind == "integer" else lo - 0.5
    extra = {"n": 1} if param == "best_of" else {}
    check(
        body(**{param: got}, **extra), param, f"{kind}_below_min_value", below(param, lo, got, kind)
    )


@pytest.mark.parametrize("param,lo,hi,kind,default", NUMERIC)
def test_numeric_above_range(param, lo, hi, kind, default):
    got = hi + 1 if kind == "integer" else hi + 0.5
    check(body(**{param: got}), param, f"{kind}_above_max_value", above(param, hi, got, kind))


@pytest.mark.parametrize("param,lo,hi,kind,default", NUMERIC)
@pytest.mark.parametrize("bad", ["1", True, [1], {"a": 1}])
def test_numeric_wrong_type(param, lo, hi, kind, default, bad):
    expected = "an integer" if kind == "integer" else "a number"
    got = {str: "a string", bool: "a boolean", list: "an array", dict: "an object"}[type(bad)]
    check(body(**{param: bad}), param, "invalid_type", type_msg(param, expected, got))


@pytest.mark.parametrize("param", ["n", "best_of", "logprobs", "seed", "max_tokens"])
def test_integer_rows_refuse_decimals(param):
    check(
        body(**{param: 2.0}),
        param,
        "invalid_type",
        type_msg(param, "an integer", "a decimal number"),
    )


@pytest.mark.parametrize("param", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_decimal_rows_refuse_non_finite(param, bad):
    check(body(**{param: bad}), param, "invalid_value")


@pytest.mark.parametrize("param,lo,hi,kind,default", NUMERIC)
def test_numeric_null_means_default(param, lo, hi, kind, default):
    req = parse_request(body(**{param: None}), INFO)
    value = getattr(req.sampling if hasattr(req.sampling, param) else req, param)
    if param == "best_of":
        assert value == req.n == 1
    else:
        assert value == default


@pytest.mark.parametrize("param,lo,hi,kind,default", NUMERIC)
def test_numeric_bounds_are_inclusive(param, lo, hi, kind, default):
    for v in (lo, hi):
        req = parse_request(body(**{param: v}), INFO)
        assert getattr(req.sampling if hasattr(req.sampling, param) else req, param) == v


# --- max_tokens -----------------------------------------------------------------------------
def test_max_tokens_below_range():
    check(
        body(max_tokens=-1),
        "max_tokens",
        "integer_below_min_value",
        below("max_tokens", 0, -1, "integer"),
    )


def test_max_tokens_above_range_is_the_context_check():
    e = check(body(max_tokens=64), None, None)  # "Hello" is 1 token; 1 + 64 > 64
    assert e.message == (
        "This model's maximum context length is 64 tokens, however you requested 65 tokens "
        "(1 in your prompt; 64 for the completion). Please reduce your prompt; or completion "
        "length."
    )
    assert parse_request(body(max_tokens=63), INFO).max_tokens == 63


def test_max_tokens_wrong_type_and_null():
    check(
        body(max_tokens=True),
        "max_tokens",
        "invalid_type",
        type_msg("max_tokens", "an integer", "a boolean"),
    )
    assert parse_request(body(max_tokens=None), INFO).max_tokens == 16


def test_context_check_uses_default_max_tokens():
    long_prompt = list(range(1000, 1049))  # 49 tokens + 16 = 65 > 64
    e = check(body(prompt=long_prompt), None, None)
    assert "49 in your prompt; 16 for the completion" in e.message


# --- model ----------------------------------------------------------------------------------
def test_model_unknown_is_404():
    check(
        body(model="gpt-9"),
        "model",
        "model_not_found",
        "The model `gpt-9` does not exist or you do not have access to it.",
        status=404,
    )


def test_model_wrong_type_and_null_and_missing():
    check(body(model=3), "model", "invalid_type", type_msg("model", "a string", "an integer"))
    check(body(model=None), "model", "missing_required_parameter")
    b = body()
    del b["model"]
    check(b, "model", "missing_required_parameter", "You must provide a model parameter.")


# --- prompt ---------------------------------------------------------------------------------
def test_prompt_below_range_empty_arrays():
    msg = (
        "Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an "
        "empty array instead."
    )
    check(body(prompt=[]), "prompt", "empty_array", msg)
    check(body(prompt=[[1, 2], []]), "prompt", "empty_array", msg)


def test_prompt_above_range_is_the_context_check():
    check(body(prompt="word " * 60), None, None)


def test_prompt_token_ids_must_be_tokens():
    for bad in (100256, 100300, -1):
        e = check(body(prompt=[1, bad]), "prompt", "invalid_value")
        assert str(bad) in e.message and "cl100k_base" in e.message
    assert parse_request(body(prompt=[100257, 100276]), INFO).prompts[0].tokens == (100257, 100276)


def test_prompt_wrong_types_and_null():
    for bad in (3, True, {"a": 1}, [1, "a"], [[1], "a"], [[1, "x"]], [1.5], [[True]]):
        e = check(body(prompt=bad), "prompt", "invalid_type")
        assert e.message.startswith("Invalid type for 'prompt': expected a string, an array of")
    check(
        body(prompt=None),
        "prompt",
        "missing_required_parameter",
        "Missing required parameter: 'prompt'.",
    )


def test_prompt_lone_surrogate_refused():
    check(body(prompt="a\ud800b"), "prompt", "invalid_value")


def test_prompt_forms():
    r = parse_request(body(prompt=["a", "b c"]), INFO)
    assert [p.tokens for p in r.prompts] == [tuple(TOK.encode("a")), tuple(TOK.encode("b c"))]
    r = parse_request(body(prompt=[[1, 2], [3]]), INFO)
    assert [p.tokens for p in r.prompts] == [(1, 2), (3,)]
    r = parse_request(body(prompt=[9906, 1917]), INFO)
    assert r.prompts[0].text == "Hello world"
    r = parse_request(body(prompt="<|endoftext|>"), INFO)
    assert r.prompts[0].tokens == (100257,)  # the special token, not its spelling


def test_empty_prompt_reads_end_of_text_and_counts_nothing():
    p = parse_request(body(prompt=""), INFO).prompts[0]
    assert (p.tokens, p.shown, p.text, p.counted) == ((100257,), (), "", 0)


# --- suffix ---------------------------------------------------------------------------------
def test_suffix_fim_wrapping_and_count():
    p = parse_request(body(prompt="def f(", suffix="return x"), INFO).prompts[0]
    inner = TOK.encode("def f(")
    assert p.tokens == (100258, *inner, 100260, *TOK.encode("return x"), 100259)
    assert p.shown == tuple(inner) and p.counted == len(p.tokens)


def test_suffix_errors():
    check(body(suffix=3), "suffix", "invalid_type", type_msg("suffix", "a string", "an integer"))
    e = check(body(suffix="x"), "suffix", "invalid_value", info=NO_FIM)
    assert "does not support insertion" in e.message
    check(body(suffix="x", echo=True), "suffix", "invalid_value")
    # above range: prompt + suffix + 3 FIM tokens + max_tokens over the context
    check(body(suffix="word " * 50), None, None)


def test_suffix_null_and_empty_mean_no_insertion():
    assert parse_request(body(suffix=None), NO_FIM).suffix is None
    assert parse_request(body(suffix=""), NO_FIM).suffix is None


# --- booleans: echo, stream -------------------------------------------------------------------
@pytest.mark.parametrize("param", ["echo", "stream"])
def test_boolean_rows(param):
    for bad, got in ((1, "an integer"), ("true", "a string"), ([True], "an array")):
        check(body(**{param: bad}), param, "invalid_type", type_msg(param, "a boolean", got))
    assert getattr(parse_request(body(**{param: None}), INFO), param) is False
    assert getattr(parse_request(body(**{param: True}), INFO), param) is True
    # booleans have no range: below/above do not apply


# --- best_of / n cross rules ----------------------------------------------------------------------
def test_best_of_below_n():
    e = check(body(n=3, best_of=2), "best_of", "invalid_value")
    assert "greater than or equal to n" in e.message


def test_best_of_above_n_with_stream():
    e = check(body(n=1, best_of=2, stream=True), "best_of", "invalid_value")
    assert "stream" in e.message


def test_best_of_defaults_to_n_even_above_20():
    r = parse_request(body(n=50), INFO)
    assert r.best_of == 50


# --- stop -------------------------------------------------------------------------------------
def test_stop_below_range():
    check(
        body(stop=[]),
        "stop",
        "empty_array",
        "Invalid 'stop': empty array. Expected an array with minimum length 1, but got an "
        "empty array instead.",
    )
    check(body(stop=""), "stop", "invalid_value")
    check(body(stop=["a", ""]), "stop", "invalid_value")


def test_stop_above_range():
    check(
        body(stop=list("abcde")),
        "stop",
        "array_above_max_length",
        "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
        "array with length 5 instead.",
    )


def test_stop_wrong_type_and_null():
    check(body(stop=3), "stop", "invalid_type")
    check(body(stop=["a", 3]), "stop", "invalid_type")
    assert parse_request(body(stop=None), INFO).stop == ()
    assert parse_request(body(stop="\n"), INFO).stop == ("\n",)


# --- logit_bias -------------------------------------------------------------------------------
def test_logit_bias_value_below_and_above_range():
    check(
        body(logit_bias={"42": -100.5}),
        "logit_bias",
        "decimal_below_min_value",
        below("logit_bias[42]", -100, -100.5, "decimal"),
    )
    check(
        body(logit_bias={"42": 101}),
        "logit_bias",
        "decimal_above_max_value",
        above("logit_bias[42]", 100, 101, "decimal"),
    )
    ids, values = parse_request(body(logit_bias={"42": -100, "7": 100}), INFO).sampling.logit_bias
    assert ids.tolist() == [42, 7] and values.tolist() == [-100.0, 100.0]


def test_logit_bias_keys():
    check(
        body(logit_bias={"AI": 1}),
        "logit_bias",
        "invalid_value",
        "Invalid key in 'logit_bias': AI. You should only be submitting non-negative integers.",
    )
    check(body(logit_bias={"-5": 1}), "logit_bias", "invalid_value")
    check(
        body(logit_bias={"100265": 1}),
        "logit_bias",
        "invalid_value",
        "Invalid key in 'logit_bias': 100265. Maximum value is 100257.",
    )
    e = check(body(logit_bias={"100256": 1}), "logit_bias", "invalid_value")
    assert "not a token" in e.message
    assert parse_request(body(logit_bias={"100257": 5}), INFO).sampling.logit_bias[0].tolist() == [
        100257
    ]


def test_logit_bias_wrong_type_and_null():
    check(body(logit_bias=[1]), "logit_bias", "invalid_type")
    # param is the field the body has; the message says which key
    check(
        body(logit_bias={"5": "x"}),
        "logit_bias",
        "invalid_type",
        "Invalid type for 'logit_bias[5]': expected a number, but got a string instead.",
    )
    assert parse_request(body(logit_bias=None), INFO).sampling.logit_bias is None
    assert parse_request(body(logit_bias={}), INFO).sampling.logit_bias is None


# --- stream_options ---------------------------------------------------------------------------
def test_stream_options_only_with_stream():
    check(
        body(stream_options={"include_usage": True}),
        "stream_options",
        None,
        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
    )
    check(body(stream=False, stream_options={"include_usage": True}), "stream_options", None)


def test_stream_options_wrong_type_unknown_key_and_null():
    check(body(stream=True, stream_options=[1]), "stream_options", None)
    check(body(stream=True, stream_options={"include_usage": 1}), "stream_options", None)
    check(body(stream=True, stream_options={"other": True}), "stream_options", None)
    assert parse_request(body(stream=True, stream_options=None), INFO).include_usage is False
    assert (
        parse_request(body(stream=True, stream_options={"include_usage": True}), INFO).include_usage
        is True
    )


# --- user, unknown fields, body -------------------------------------------------------------------
def test_user():
    check(body(user=5), "user", "invalid_type", type_msg("user", "a string", "an integer"))
    assert isinstance(parse_request(body(user="u1"), INFO), Request)
    assert isinstance(parse_request(body(user=None), INFO), Request)


def test_unknown_field():
    check(body(top_k=5), "top_k", None, "Unrecognized request argument supplied: top_k")


def test_body_not_an_object():
    for bad in ([1], "x", None, 3):
        e = check(bad, None, None)
        assert e.message.startswith("We could not parse the JSON body of your request.")


def test_logprobs_mode_extension():
    assert (
        parse_request(body(logprobs_mode="processed"), INFO).sampling.logprobs_mode == "processed"
    )
    assert parse_request(body(logprobs_mode=None), INFO).sampling.logprobs_mode == "raw"
    check(body(logprobs_mode="both"), "logprobs_mode", "invalid_value")
    check(body(logprobs_mode=1), "logprobs_mode", "invalid_type")


# --- hostile values (issue 13): always a 400 naming the field, never another exception --------
HUGE = 10**400  # a 401-digit integer: float(HUGE) overflows


@pytest.mark.parametrize("param,lo,hi,kind,default", NUMERIC)
def test_huge_integers_are_range_errors(param, lo, hi, kind, default):
    e = check(body(**{param: HUGE}), param, f"{kind}_above_max_value")
    assert e.message.endswith("but got an integer of 400 or more digits instead.")
    check(body(**{param: -HUGE}), param, f"{kind}_below_min_value")


def test_huge_logit_bias_values_and_keys():
    e = check(body(logit_bias={"5": HUGE}), "logit_bias", "decimal_above_max_value")
    assert e.message.startswith("Invalid 'logit_bias[5]': decimal above maximum value.")
    key = "1" * 5000  # int() refuses strings of more than 4,300 digits
    e = check(body(logit_bias={key: 1}), "logit_bias", "invalid_value")
    assert e.message == f"Invalid key in 'logit_bias': {key[:80]}…. Maximum value is 100257."
    e = check(body(logit_bias={HUGE: 1}), "logit_bias", "invalid_value")  # (the library form)
    assert "Maximum value is 100257" in e.message
    assert parse_request(body(logit_bias={"0" * 30 + "5": 1}), INFO).sampling.logit_bias[
        0
    ].tolist() == [5]


def test_huge_token_id_in_a_prompt():
    e = check(body(prompt=[HUGE]), "prompt", "invalid_value")
    assert e.message.startswith("Invalid 'prompt': an integer of 400 or more digits is not")


def test_lone_surrogates_in_any_quoted_text_are_escaped():
    """A message or param quoting request text with a lone surrogate (which UTF-8 cannot
    carry) writes it as the escape ``\\ud800``: the error can always be sent."""
    e = check({"model": "m", "prompt": "x", "mo\ud800": 1}, "mo\\ud800", None)
    assert e.message == "Unrecognized request argument supplied: mo\\ud800"
    e = check({"model": "\ud800", "prompt": "x"}, "model", "model_not_found", status=404)
    assert "`\\ud800`" in e.message
    check(body(logit_bias={"\ud800": 1}), "logit_bias", "invalid_value")
    check(body(stream=True, stream_options={"\ud800": 1}), "stream_options", None)
    check(body(logprobs_mode="\ud800"), "logprobs_mode", "invalid_value")
    for e in (err({"model": "m", "prompt": "x", "mo\ud800": 1}), err(body(logprobs_mode="\udfff"))):
        (e.message + (e.param or "")).encode("utf-8")  # never raises


def test_long_and_nested_values_are_quoted_short():
    e = check({"model": "m", "prompt": "x", "z" * 10_000: 1}, "z" * 10_000, None)
    assert len(e.message) < 200
    e = check({"model": "m" * 10_000, "prompt": "x"}, "model", "model_not_found", status=404)
    assert len(e.message) < 200
    deep: list = []
    for _ in range(5000):  # deeper than the recursion limit: nothing may recurse into it
        deep = [deep]
    for field in ("logprobs_mode", "stop", "suffix", "user", "n", "temperature", "prompt"):
        check(body(**{field: deep}), field, "invalid_type")
    check(body(logit_bias={"5": deep}), "logit_bias", "invalid_type")


def test_server_limit_names_the_parameter_the_request_sent():
    """Issue 13 F: the sequences a request needs are prompts x best_of; best_of defaults to
    n, so a request that sent only n hears about n."""
    from sampler.params import Limits

    lim = Limits(max_sequences=64)
    with pytest.raises(RequestError) as e:
        parse_request(body(prompt=[563, 554], n=65), INFO, lim)
    assert e.value.param == "n" and "65 sequences (1 prompt x n 65)" in e.value.message
    assert "--max-batch" in e.value.message
    with pytest.raises(RequestError) as e:
        parse_request(body(prompt=["a", "b", "c", "d"], n=20, best_of=20), INFO, lim)
    assert e.value.param == "best_of" and "(4 prompts x best_of 20)" in e.value.message
    with pytest.raises(RequestError) as e:
        parse_request(body(prompt=["a"] * 65), INFO, lim)
    assert e.value.param == "prompt"
