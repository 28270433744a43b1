"""The drafter's settings: the offline default, the chat drafter's explicit switch, its key in production."""
from __future__ import annotations

import pytest

from support import ROOT
from test_config import PRODUCTION, STRONG
from waflow import config
from waflow.drafting import make_drafter

CHAT = {"DRAFTER": "chat", "DRAFT_LLM_URL": "https://llm.example.com/v1", "DRAFT_LLM_MODEL": "law-drafter-1"}
CHOSEN = {**CHAT, "DRAFT_LLM_SEND_CLIENT_TEXT": "true"}


def test_the_offline_drafter_and_the_sample_knowledge_base_are_the_default():
    settings = config.load({})
    assert (settings.drafter, settings.draft_llm_timeout) == ("offline", 20.0)
    assert settings.draft_llm_send_client_text is False
    assert settings.knowledge_dir == ROOT / "knowledge"


def test_it_reads_the_knowledge_folder_from_the_environment(tmp_path):
    assert config.load({"WAFLOW_KNOWLEDGE_DIR": str(tmp_path)}).knowledge_dir == tmp_path


def test_production_refuses_the_chat_drafter_without_the_explicit_switch():
    with pytest.raises(config.ConfigError, match="DRAFTER=chat sends client messages .* production refuses unless "
                                                 "DRAFT_LLM_SEND_CLIENT_TEXT=true"):
        config.load({**PRODUCTION, **CHAT})
    with pytest.raises(config.ConfigError, match="DRAFT_LLM_SEND_CLIENT_TEXT=true"):
        config.load({**PRODUCTION, **CHAT, "DRAFT_LLM_SEND_CLIENT_TEXT": "false"})


def test_production_refuses_the_chat_drafter_even_on_this_machine_without_the_switch():
    with pytest.raises(config.ConfigError, match="production refuses"):
        config.load({**PRODUCTION, **CHAT, "DRAFT_LLM_URL": "http://127.0.0.1:8000/v1"})


def test_production_runs_the_chat_drafter_with_the_switch_and_a_strong_key():
    settings = config.load({**PRODUCTION, **CHOSEN, "DRAFT_LLM_API_KEY": STRONG})
    assert settings.drafter == "chat" and settings.draft_llm_send_client_text
    assert make_drafter(settings).name == "chat"


@pytest.mark.parametrize("key, rule", [(None, "is not set"), ("short-key", "must be at least 16 characters long"),
                                       ("waflow-dev-llm-key", "is the published development stand-in")])
def test_the_drafter_refuses_a_missing_or_weak_key_in_production_naming_it(key, rule):
    env = {**PRODUCTION, **CHOSEN, **({"DRAFT_LLM_API_KEY": key} if key else {})}
    settings = config.load(env)  # only the drafter needs the key: the other processes start
    with pytest.raises(config.ConfigError, match=f"^DRAFT_LLM_API_KEY {rule}, which drafter refuses in production"):
        make_drafter(settings)


def test_production_needs_no_model_key_with_the_offline_drafter():
    assert make_drafter(config.load(PRODUCTION)).name == "offline"


def test_production_refuses_a_model_over_plain_http_off_this_machine():
    with pytest.raises(config.ConfigError, match="DRAFT_LLM_URL must use https in production"):
        config.load({**PRODUCTION, **CHOSEN, "DRAFT_LLM_URL": "http://llm.example.com/v1"})


def test_development_refuses_a_model_off_this_machine_without_the_switch():
    with pytest.raises(config.ConfigError, match="a model off this machine refuses unless DRAFT_LLM_SEND_CLIENT_TEXT"):
        config.load(CHAT)
    assert config.load(CHOSEN).drafter == "chat"
    assert config.load({**CHAT, "DRAFT_LLM_URL": "http://127.0.0.1:8000/v1"}).drafter == "chat"


@pytest.mark.parametrize("env, message", [
    ({"DRAFTER": "gpt"}, "DRAFTER must be one of offline, chat"),
    ({"DRAFT_LLM_TIMEOUT": "soon"}, "DRAFT_LLM_TIMEOUT must be a number"),
    ({"DRAFT_LLM_TIMEOUT": "0.1"}, "DRAFT_LLM_TIMEOUT must be between 1.0 and 300.0"),
    ({"DRAFT_LLM_SEND_CLIENT_TEXT": "yes"}, "DRAFT_LLM_SEND_CLIENT_TEXT must be true or false"),
    ({**CHAT, "DRAFT_LLM_URL": ""}, "DRAFT_LLM_URL must be the model server's http"),
    ({**CHAT, "DRAFT_LLM_URL": "llm.example.com"}, "DRAFT_LLM_URL must be the model server's http"),
    ({**CHOSEN, "DRAFT_LLM_MODEL": " "}, "DRAFT_LLM_MODEL is not set"),
])
def test_it_refuses_malformed_drafting_settings_naming_the_variable(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env)


def test_settings_never_show_the_model_key():
    settings = config.load({**CHOSEN, "DRAFT_LLM_API_KEY": "sk-very-secret-key-123"})
    assert "sk-very-secret-key-123" not in repr(settings) + str(settings)
