//! Host bindings of `wasi:keyvalue@0.2.0-draft` and `perch:kv/ext`
//! (WIT in the repository's `wit/`).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "perch:kv/imports",
    imports: { default: async | trappable },
    with: {
        "wasi:keyvalue/store.bucket": crate::guest::Bucket,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => crate::guest::GuestError,
    },
});
