"""Which config keys are secrets: values of real secrets are redacted, settings that merely mention tokens are not."""

from __future__ import annotations

import pytest

from traitlab.tracking.params import REDACTED, is_secret_key, redact


@pytest.mark.parametrize("key", ["model.extra.hf_token", "token", "judge.api_key", "x.auth_token", "db.password",
                                 "client_secret", "access-token"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["extraction.generation.max_new_tokens", "inference.massive.max_tokens",
                                 "steering.max_new_tokens", "model.tokenizer", "judge.api_key_env", "n_tokens"])
def test_settings_that_mention_tokens_are_not_secrets(key):
    assert not is_secret_key(key)


def test_redact_keeps_generation_lengths_and_hides_tokens():
    cfg = {"generation": {"max_new_tokens": 48}, "model": {"extra": {"hf_token": "hf_abcdef"}}}
    assert redact(cfg) == {"generation": {"max_new_tokens": 48}, "model": {"extra": {"hf_token": REDACTED}}}
