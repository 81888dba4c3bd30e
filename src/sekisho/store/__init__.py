"""Regional stores: what sekisho keeps of a request, in the tenant's home region, encrypted
under that region's keys, for as long as the retention says. See docs/storage.md."""

from sekisho.store.crypto import TenantKeys
from sekisho.store.errors import (
    ErasureIncomplete,
    KeyProviderError,
    RecordUnreadable,
    RotationIncomplete,
    StoreError,
    StoreMisconfigured,
    TenantKeyDestroyed,
    TenantKeyMissing,
)
from sekisho.store.keys import KeyProvider, LocalKeyFile, VaultTransit
from sekisho.store.spec import (
    Kept,
    KeyProviderSpec,
    LevelRetention,
    LocalKeysSpec,
    RetentionSpec,
    VaultKeysSpec,
    key_provider_of,
    retention_of,
)
from sekisho.store.stores import (
    DEFAULT_SWEEP_INTERVAL,
    AuditSink,
    Exchange,
    KeptExchange,
    StoredRef,
    Stores,
    TenantStore,
    validate_regions,
)

__all__ = [
    "DEFAULT_SWEEP_INTERVAL",
    "AuditSink",
    "ErasureIncomplete",
    "Exchange",
    "Kept",
    "KeptExchange",
    "KeyProvider",
    "KeyProviderError",
    "KeyProviderSpec",
    "LevelRetention",
    "LocalKeyFile",
    "LocalKeysSpec",
    "RecordUnreadable",
    "RetentionSpec",
    "RotationIncomplete",
    "StoreError",
    "StoreMisconfigured",
    "StoredRef",
    "Stores",
    "TenantKeyDestroyed",
    "TenantKeyMissing",
    "TenantKeys",
    "TenantStore",
    "VaultKeysSpec",
    "VaultTransit",
    "key_provider_of",
    "retention_of",
    "validate_regions",
]
