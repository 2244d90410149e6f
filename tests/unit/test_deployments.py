"""Every deployment in deployments/prefect.yaml points at an importable flow whose parameters validate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_deployment_entrypoints_import_and_parameters_validate():
    from prefect.flows import Flow

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module_spec = importlib.util.spec_from_file_location(f"_deploy_{name}", REPO / path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        flow = getattr(module, name)
        assert isinstance(flow, Flow)
        validated = flow.validate_parameters(deployment.get("parameters", {}))
        assert set(validated) >= set(deployment.get("parameters", {}))


def test_settings_reject_a_public_sentinel_in_access_groups(monkeypatch):
    import pytest
    from pydantic import ValidationError

    from tasks.config import load_settings

    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", '{"hr/**": ["*"]}')
    with pytest.raises(ValidationError, match="not '\\*'"):
        load_settings()
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", '{"hr/**": ["hr"]}')
    assert load_settings().ingest.access_groups == {"hr/**": ["hr"]}


def test_the_answer_deployment_form_has_no_groups_field():
    from prefect.utilities.callables import parameter_schema

    from flows.answer import answer, answer_service

    assert "groups" in parameter_schema(answer).properties  # the local flow keeps it (CLI, evaluation)
    assert "groups" not in parameter_schema(answer_service).properties
    assert "config_file" not in parameter_schema(answer_service).properties  # a config names groups too
