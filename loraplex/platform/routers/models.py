"""`GET /v1/models`: the base model and the calling tenant's adapters."""

from __future__ import annotations

from fastapi import APIRouter

from loraplex.adapters.registry import list_adapter_versions, list_adapters
from loraplex.platform.deps import SessionDep, StateDep, TenantDep
from loraplex.platform.errors import model_not_found
from loraplex.platform.protocol import ModelCard, ModelList

router = APIRouter(tags=["OpenAI"])


def _cards(state: StateDep, session: SessionDep, principal: TenantDep) -> list[ModelCard]:
    base = state.served_model_name
    cards = [
        ModelCard(
            id=base,
            created=int(state.started_at),
            owned_by="loraplex",
            root=state.model_path,
        )
    ]
    assert principal.tenant_id is not None
    for adapter in list_adapters(session=session, tenant_id=principal.tenant_id):
        if not list_adapter_versions(session=session, adapter_id=adapter.id):
            continue  # every version deleted: nothing to serve under this name
        cards.append(
            ModelCard(
                id=adapter.name,
                created=int(adapter.created_at.timestamp()),
                owned_by=principal.tenant_name,
                parent=base,
                root=base,
            )
        )
    return cards


@router.get("/v1/models", response_model=ModelList, summary="List the models you can use")
def list_models(state: StateDep, session: SessionDep, principal: TenantDep) -> ModelList:
    return ModelList(data=_cards(state, session, principal))


@router.get("/v1/models/{model}", response_model=ModelCard, summary="Describe one model")
def get_model(model: str, state: StateDep, session: SessionDep, principal: TenantDep) -> ModelCard:
    for card in _cards(state, session, principal):
        if card.id == model:
            return card
    raise model_not_found(model)
