//! shoal control plane (issue 4).
#![forbid(unsafe_code)]
