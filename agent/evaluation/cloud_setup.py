"""How a Kubernetes or OCI scenario of the evaluation corpus creates its failure: the objects
seeded into the API doubles (pods with their container statuses, logs, events, metrics; an OCI
container instance with its containers and logs). Data only; tests/ seeds the doubles from it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class KubernetesSetup(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder, being written


class OciSetup(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # placeholder, being written
