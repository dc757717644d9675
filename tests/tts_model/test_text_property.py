"""Any text through the front end, in process: segments the LLM can take, or a refusal in one
sentence (the API's 400) — never another error. Many examples, as this is fast."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.leaks import assert_one_sentence
from tts_core.limits import MAX_TEXT_CHARS
from tts_core.wire import FrontendError, SpeechTokenRequest
from tts_model.frontend import TextFrontend
from tts_model.llm_decode import SpeechTokenDecoder

#: Text that once broke normalisation or asks for trouble.
TRICKY = ["see [1] here", "Price [5kg]", "[31", "Hello\u001b[31m world", "...!!!???,,,", "😀😀😀🎉", "[1]",
          "\u200b1", "a\x00b", "x [1 y [22] z [333", "你好[1]世界", "【3】《4》", "\ud800 lone surrogate",
          "<|endofprompt|>", "1" * MAX_TEXT_CHARS, "[" * MAX_TEXT_CHARS, "a. " * (MAX_TEXT_CHARS // 3),
          " \t\n\r\x0b\x0c", "$[1]", "¹²³ ½ Ⅻ", "१२३ ٤٥٦", "ﬁ ﬂ", "𝟙𝟚𝟛", "\u202eevil", "https://x.y/[1]",
          '."', '!"hello', '。“你好']

any_text = st.text(st.characters(exclude_categories=()), max_size=MAX_TEXT_CHARS)
short_text = st.text(st.characters(exclude_categories=()), max_size=40)


@pytest.fixture(scope="module")
def frontend(tiny_model) -> TextFrontend:
    return TextFrontend(tiny_model.tokenizer)


@pytest.fixture(scope="module")
def decoder(tiny_model) -> SpeechTokenDecoder:
    return SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)


@given(text=st.one_of(st.sampled_from(TRICKY), short_text, any_text))
@settings(max_examples=300, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_any_text_gives_model_input_or_a_one_sentence_refusal(frontend, decoder, text) -> None:
    try:
        segments = frontend.segments(text)
    except FrontendError as exc:
        assert_one_sentence(str(exc))
        return
    assert segments and all(segments)
    for tokens in segments:  # the LLM accepts every segment
        state = decoder.start(SpeechTokenRequest(text_token=tokens))
        assert state.min_len >= 2 and state.max_len > state.min_len


@pytest.mark.parametrize("text", ["see [1] here", "Price [5kg]", "[31", "Hello\u001b[31m world"])
def test_text_that_broke_normalisation_is_spoken(frontend, text) -> None:
    [segment] = frontend.normalize(text)
    assert "\x1b" not in segment and any(char.isalpha() for char in segment)


@pytest.mark.parametrize("text", ["...!!!???,,,", "😀😀😀🎉", "\u200b", "\x1b[31m"])
def test_text_with_nothing_to_speak_is_refused(frontend, text) -> None:
    with pytest.raises(FrontendError, match="nothing to speak"):
        frontend.segments(text)
