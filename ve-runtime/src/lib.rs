//! The VE model and lifecycle of vectl, and the host that keeps them: its
//! state directory and settings, VE configs and runtime state, locking,
//! starting an init in its own namespaces, exec/enter, limits and cgroups (v1
//! and v2 behind [`CgroupBackend`]), admission control, usage, and change
//! control (clone, snapshots, upgrade, rollback). Networking, storage and the
//! template store are the leaf crates' (`netns`, `quota`, `ve-templates`); this
//! crate keeps what the host records of them and drives them.
//!
//! Modules: `host` (state directory, settings, capacity), `handles` (the public
//! API by area), `ve` and `options` (lifecycle), `config` and `state` (what is
//! recorded), `launch`, `exec`, `security`, `step`, `sys`, `signal` (processes),
//! `units` and `limits` (values and limits), `cgroup`, `admission`, `stats`,
//! `net` (networks and NICs as the host keeps them), `template`, `pool`,
//! `pool_check`, `snapshot`, `clone`, `upgrade`, `backup` and `archive`
//! (backups and their stream), `migrate`, `replicate`, `import_host`, and `error`, `fsutil`, `failpoint`.
//!
//! The CLI talks to a [`Host`] (one state directory), opened with
//! [`Host::open`] (or made with [`Host::init`], or [`Host::open_or_init`] for
//! the commands that initialise a root implicitly). What it does is grouped in
//! handles, one per area (see `handles.rs`):
//!
//! ```no_run
//! # fn main() -> ve_runtime::Result<()> {
//! use ve_runtime::Host;
//! let host = Host::open(std::path::Path::new(ve_runtime::DEFAULT_ROOT))?;
//! host.ves().start("web1", false)?; // VEs: create, start, stop, set, exec, list, ...
//! let nets = host.nets().list()?; // networks
//! let versions = host.templates().list()?; // the template store
//! let pool = host.storage().info()?; // the storage pool
//! let snaps = host.snapshots().list("web1")?; // snapshots of a VE
//! let moves = host.upgrades().history("web1")?; // template upgrades of VEs
//! let free = host.capacity(); // host-wide: settings, capacity, reserve, commitments
//! # let _ = (nets, versions, pool, snaps, moves, free);
//! # Ok(())
//! # }
//! ```

mod admission;
mod archive;
mod backup;
mod cgroup;
mod change;
mod checkpoint;
mod claims;
mod clone;
mod config;
mod console;
mod error;
mod exec;
mod failpoint;
mod fsutil;
mod handles;
mod host;
pub mod host_limits;
mod import_host;
mod launch;
mod limits;
mod migrate;
mod net;
pub mod oci;
mod options;
mod pool;
mod pool_check;
mod procview;
mod replicate;
mod roots;
mod security;
mod signal;
mod snapshot;
mod state;
mod stats;
mod step;
mod supervise;
mod sys;
mod sysinfo;
mod template;
mod units;
mod upgrade;
mod userns;
mod ve;

pub use admission::{Commitment, Commitments};
pub use backup::{
    BACKUP_EXT, BackupEntry, BackupMade, BackupOptions, LayerFormat, Manifest, ManifestSummary,
    RestoreOptions, Restored, TemplateRecord, Verified,
};
pub use cgroup::{CgroupBackend, CgroupSettings, CgroupVersion, Usage};
pub use change::Renamed;
pub use clone::Cloned;
pub use config::{
    Autostart, AutostartChange, RestartPolicy, TemplateMove, VeConfig, validate_hostname,
    validate_name,
};
pub use console::{DETACH_KEY, LOG_CAP};
pub use error::{Error, Result};
pub use handles::{Backups, Nets, Snapshots, Storage, Templates, Upgrades, Ves};
pub use host::{
    DEFAULT_ROOT, Host, HostSettings, InitOptions, Reserve, SettingsChange, VeDefaults,
};
pub use import_host::{HostImported, ImportHostOptions, ServerSource};
pub use limits::{
    Capacity, HostFacts, IoDevice, IoLimits, KernelLimits, Limits, LimitsUpdate, NoIoDevice,
};
pub use migrate::{MigrateOptions, Migrated, RoundReport};
pub use net::{DEFAULT_NET, NetCreate, NetDetails, NetMember, NetUpdate};
pub use netns::model::{HostAccess, Mode, NetConfig, PortMap, Proto, Rate, Subnet};
pub use netns::nic::{Nic, NicInfo, NicRequest};
pub use options::{CreateOptions, ExecOptions, StopOptions};
pub use pool::{PoolInfo, VolumeUse};
pub use pool_check::PoolProblem;
pub use procview::{DEFAULT_LXCFS_DIR, Lxcfs, ProcViewSettings, RebindReport, Rebound, VIEW_OFF};
pub use quota::{
    Backend as PoolBackend, LostImage, PoolSpace, SnapshotInfo, Source as PoolSource,
    UnknownBackend,
};
pub use replicate::{
    FailedOver, FailoverOptions, ReplicaInfo, ReplicaRun, ReplicaSchedule, Replicated,
};
pub use roots::{DEFAULT_REGISTRY, REGISTRY_ENV, TornDown, registered_roots};
pub use security::{USERNS_CAPS, VE_CAPS};
pub use signal::{BadSignal, parse_signal, signal_name};
pub use snapshot::{Consistency, SnapshotMade};
pub use state::{ExitRecord, RunState, Status};
pub use stats::{NicStats, VeStats};
pub use supervise::{HOST_NETNS_ENV, supervise};
pub use template::TemplateUsage;
pub use units::{
    Amount, BadValue, Cpus, NetShare, Percent, Setting, Size, human_bytes, parse_count,
};
pub use upgrade::{Committed, FleetRow, Moved, Rollout, UpgradeCheck};
pub use userns::IdRange;
pub use ve::{ProcView, SetOutcome, StopOutcome, VeDetails, VeInfo};
pub use ve_templates::{Conflict, PackageChange};
pub use ve_templates::{
    DEBIAN_MIRROR, Debootstrap, Error as TemplateError, Progress, Source, TemplateRef,
    TemplateVersion,
};
