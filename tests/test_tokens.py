"""Word -> token mapping with Stable Diffusion's real CLIP BPE."""
import pytest

from pipeline.attention import WordNotInPromptError, find_word_tokens


def test_special_token_ids_are_sds(tokenizer):
    ids = tokenizer("a photograph of a dog").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407
    assert len(tokenizer) == 49408


def test_single_token_word_index(tokenizer):
    assert find_word_tokens(tokenizer, "a photograph of a dog", "dog") == [5]
    assert find_word_tokens(tokenizer, "A Photograph of a DOG", "dog") == [5]  # CLIP lower-cases


def test_split_words_use_every_piece(tokenizer):
    assert tokenizer.convert_ids_to_tokens(tokenizer("aeroplane", add_special_tokens=False).input_ids) == ["aerop", "lane</w>"]
    assert find_word_tokens(tokenizer, "a photograph of a aeroplane", "aeroplane") == [5, 6]
    assert len(find_word_tokens(tokenizer, "a photograph of a pottedplant", "pottedplant")) == 3
    assert find_word_tokens(tokenizer, "a photograph of a dining table", "dining table") == [5, 6]


def test_every_occurrence_counts(tokenizer):
    assert find_word_tokens(tokenizer, "a dog and a dog", "dog") == [2, 5]


@pytest.mark.parametrize("prompt, word", [("a photograph of a cat", "dog"), ("a photograph of dogs", "dog"), ("a dog", " ")])
def test_word_not_in_prompt_is_a_clear_error(tokenizer, prompt, word):
    with pytest.raises(WordNotInPromptError, match="prompt|empty"):
        find_word_tokens(tokenizer, prompt, word)


def test_word_truncated_away_is_an_error(tokenizer):
    long = "a photograph of a " + "very " * 80 + "dog"
    with pytest.raises(WordNotInPromptError):
        find_word_tokens(tokenizer, long, "dog")
