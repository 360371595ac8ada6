//! PLACEHOLDER until the real tc module lands (helper in /work/tc-wt).
use rtnetlink::Handle;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRate {
    pub rate: u64,
    pub ceil: u64,
}
#[derive(Debug, thiserror::Error)]
#[error("tc {what}: {reason}")]
pub struct TcError {
    pub what: String,
    pub reason: String,
}
fn todo_tc() -> Result<(), TcError> {
    Err(TcError {
        what: "shaping".into(),
        reason: "not built yet".into(),
    })
}
pub async fn ensure_shaper(_h: &Handle, _u: &str, _d: &str, _t: u64) -> Result<(), TcError> {
    todo_tc()
}
pub async fn remove_shaper(_h: &Handle, _u: &str, _d: &str) -> Result<(), TcError> {
    Ok(())
}
pub async fn shape_port(
    _h: &Handle,
    _p: &str,
    _ip: std::net::Ipv4Addr,
    _u: &str,
    _d: &str,
    _m: u16,
    _r: ClassRate,
) -> Result<(), TcError> {
    todo_tc()
}
pub async fn set_class(
    _h: &Handle,
    _u: &str,
    _d: &str,
    _m: u16,
    _r: ClassRate,
) -> Result<(), TcError> {
    todo_tc()
}
pub async fn unshape_port(
    _h: &Handle,
    _p: Option<&str>,
    _ip: std::net::Ipv4Addr,
    _u: &str,
    _d: &str,
    _m: u16,
) -> Result<(), TcError> {
    Ok(())
}
pub async fn classes(_h: &Handle, _u: &str) -> Result<Vec<(u16, ClassRate)>, TcError> {
    Ok(vec![])
}
