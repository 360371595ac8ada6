//! The public surface of a [`Host`], one handle per area:
//!
//! | accessor                | handle         | covers                                          |
//! |-------------------------|----------------|-------------------------------------------------|
//! | [`Host::ves`]           | [`Ves`]        | VE lifecycle, limits, ports, exec/enter, clone, stats |
//! | [`Host::nets`]          | [`Nets`]       | the host's networks                             |
//! | [`Host::templates`]     | [`Templates`]  | the template store: import, build, list, gc     |
//! | [`Host::storage`]       | [`Storage`]    | the storage pool: info, grow, check             |
//! | [`Host::snapshots`]     | [`Snapshots`]  | snapshots of a VE's private layer               |
//! | [`Host::upgrades`]      | [`Upgrades`]   | moving VEs between template versions            |
//!
//! What concerns the host as a whole (its settings, capacity, reserve and the
//! guarantees committed against them) stays on [`Host`] itself.
//!
//! A handle is a borrowed `Host` and costs nothing to make:
//! `host.ves().start("web1", false)`. Each method delegates to the
//! implementation in its area's file (`ve.rs`, `net.rs`, `template.rs`,
//! `pool.rs`, `pool_check.rs`, `snapshot.rs`, `upgrade.rs`, `clone.rs`,
//! `stats.rs`), where the details (locking, crash safety) are described.

use std::path::{Path, PathBuf};

use netns::model::{NetConfig, PortMap};
use ve_templates::{Progress, Source, TemplateVersion};

use crate::backup::{BackupEntry, BackupMade, BackupOptions, RestoreOptions, Restored, Verified};
use crate::clone::Cloned;
use crate::config::{TemplateMove, VeConfig};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::limits::LimitsUpdate;
use crate::net::{NetCreate, NetDetails, NetUpdate};
use crate::options::{CreateOptions, ExecOptions, StopOptions};
use crate::pool::PoolInfo;
use crate::pool_check::PoolProblem;
use crate::snapshot::SnapshotMade;
use crate::state::RunState;
use crate::stats::VeStats;
use crate::template::TemplateUsage;
use crate::upgrade::{Committed, FleetRow, Moved, Rollout, UpgradeCheck};
use crate::userns::IdRange;
use crate::ve::{SetOutcome, StopOutcome, VeDetails, VeInfo};
use quota::LostImage;

impl Host {
    /// The VEs of this host: [`Ves`].
    pub fn ves(&self) -> Ves<'_> {
        Ves(self)
    }
    /// The networks of this host: [`Nets`].
    pub fn nets(&self) -> Nets<'_> {
        Nets(self)
    }
    /// The template store: [`Templates`].
    pub fn templates(&self) -> Templates<'_> {
        Templates(self)
    }
    /// The storage pool: [`Storage`].
    pub fn storage(&self) -> Storage<'_> {
        Storage(self)
    }
    /// Snapshots of VEs: [`Snapshots`].
    pub fn snapshots(&self) -> Snapshots<'_> {
        Snapshots(self)
    }
    /// Template upgrades of VEs: [`Upgrades`].
    pub fn upgrades(&self) -> Upgrades<'_> {
        Upgrades(self)
    }
    /// Backups of VEs and restoring them: [`Backups`].
    pub fn backups(&self) -> Backups<'_> {
        Backups(self)
    }
}

/// The VEs of a host ([`Host::ves`]): [`resolve`](Ves::resolve) a name or id,
/// [`create`](Ves::create), [`start`](Ves::start), [`stop`](Ves::stop),
/// [`destroy`](Ves::destroy); change limits ([`set`](Ves::set)) and published
/// ports ([`map_ports`](Ves::map_ports)); [`list`](Ves::list) and
/// [`show`](Ves::show); run commands inside ([`exec`](Ves::exec),
/// [`enter`](Ves::enter)); [`clone`](Ves::clone) one; [`stats`](Ves::stats).
///
/// Commands take a VE's name or its numeric id.
#[derive(Clone, Copy)]
pub struct Ves<'h>(&'h Host);

impl<'h> Ves<'h> {
    /// Resolves a name or numeric id to the VE's name.
    pub fn resolve(self, name_or_id: &str) -> Result<String> {
        self.0.resolve(name_or_id)
    }

    /// Creates a VE (stopped).
    pub fn create(self, opts: &CreateOptions) -> Result<VeConfig> {
        self.0.refuse_lost_pool_image()?;
        self.0.create(opts)
    }

    /// Starts a VE; returns once its init runs. Admission control refuses a VE
    /// whose guarantees do not fit beside the running VEs' unless `force`.
    pub fn start(self, name_or_id: &str, force: bool) -> Result<RunState> {
        self.0.refuse_lost_pool_image()?;
        self.0.start(name_or_id, force)
    }

    /// The supervisor's restart of a VE whose init ended: starts it only if
    /// no operator's `stop` or `start` came since (`None` then).
    pub fn start_pending_restart(self, name_or_id: &str) -> Result<Option<RunState>> {
        self.0.refuse_lost_pool_image()?;
        self.0.start_unless(name_or_id, false, true)
    }

    /// Stops a VE: asks init to halt, waits up to the timeout, kills what is left.
    pub fn stop(self, name_or_id: &str, opts: StopOptions) -> Result<StopOutcome> {
        self.0.stop(name_or_id, opts)
    }

    /// Moves a stopped VE into a user namespace of its own (`private`, with a
    /// new range of host ids) or out of it (privileged). No file changes: its
    /// own layer is kept unshifted either way. Returns its range, if any.
    pub fn set_userns(self, name_or_id: &str, private: bool) -> Result<Option<IdRange>> {
        self.0.set_userns(name_or_id, private)
    }

    /// Destroys a VE: its config, private files, cgroups and id. A running VE is
    /// refused unless `force` (then it is killed first).
    pub fn destroy(self, name_or_id: &str, force: bool) -> Result<()> {
        self.0.destroy(name_or_id, force)
    }

    /// Changes limits: live on a running VE (then saved), saved only on a stopped
    /// one. A refused change leaves kernel and config as they were.
    /// With `force`, admission control is skipped and a RAM limit below what the VE
    /// uses is written even where the kernel would OOM-kill to meet it (v2).
    pub fn set(self, name_or_id: &str, update: &LimitsUpdate, force: bool) -> Result<SetOutcome> {
        self.0.set(name_or_id, update, force)
    }

    /// Maps ports of the host's addresses to a VE's (`add`; the CLI's
    /// `--publish`) and withdraws others (`remove`, matched by host port and
    /// protocol). Takes effect at once, running or not; returns the VE's port
    /// mappings. `check_only` checks the change without making it. (In the
    /// code, "publish" is what a template version is; a port is mapped.)
    pub fn map_ports(
        self,
        name_or_id: &str,
        add: &[PortMap],
        remove: &[PortMap],
        check_only: bool,
    ) -> Result<Vec<PortMap>> {
        self.0.map_ports(name_or_id, add, remove, check_only)
    }

    /// Every VE, by id. Configs that cannot be read are returned as errors beside
    /// the list rather than failing it.
    pub fn list(self) -> Result<(Vec<VeInfo>, Vec<Error>)> {
        self.0.list()
    }

    /// [`Ves::list`], reading the VEs on several threads: faster with
    /// hundreds of VEs, for a command that only shows them. A process that
    /// goes on to start or enter VEs must use [`Ves::list`] (the kernel
    /// refuses to move a process with threads into a VE's mount namespace).
    pub fn list_to_show(self) -> Result<(Vec<VeInfo>, Vec<Error>)> {
        self.0.list_in_threads()
    }

    /// Everything about one VE.
    pub fn show(self, name_or_id: &str) -> Result<VeDetails> {
        self.0.show(name_or_id)
    }

    /// Runs a command in a running VE; returns its exit status.
    pub fn exec(self, name_or_id: &str, opts: &ExecOptions) -> Result<i32> {
        self.0.exec(name_or_id, opts)
    }

    /// Opens an interactive login shell in a running VE (root's shell from its
    /// /etc/passwd, else /bin/sh). The VE's files are read inside its root: a
    /// VE's /etc/passwd may be a symlink, a FIFO or a huge file.
    pub fn enter(self, name_or_id: &str) -> Result<i32> {
        self.0.enter(name_or_id)
    }

    /// Clones VE `src` as a new, stopped VE `dst`: a copy of its private layer
    /// (a snapshot where the pool can), on `template` (a version of any
    /// template; default the source's), with a new identity: name, id, hostname
    /// (`hostname` or `dst`), MACs and addresses on the same networks. Published
    /// ports are not copied (a host port belongs to one VE). A running source is
    /// frozen for the moment of the copy. A killed clone leaves nothing that the
    /// next command on `dst` (or `pool check --repair`) does not remove
    /// (`clone.rs` has the details).
    pub fn clone(
        self,
        src: &str,
        dst: &str,
        template: Option<&str>,
        hostname: Option<&str>,
    ) -> Result<Cloned> {
        self.0.clone_ve(src, dst, template, hostname)
    }

    /// Binds LXCFS's files again in every running VE whose /proc view is dead
    /// (LXCFS restarted) or missing (it started while LXCFS was down), waiting
    /// up to `wait` for LXCFS to answer. Per VE: what was bound, or why not.
    pub fn rebind_proc_view(
        self,
        wait: std::time::Duration,
    ) -> Result<crate::procview::RebindReport> {
        self.0.rebind_proc_view(wait)
    }

    /// Sets a VE's hostname; at once in a running VE (then `true`), and in its
    /// /etc/hostname and /etc/hosts at its next start.
    pub fn set_hostname(self, name_or_id: &str, hostname: &str) -> Result<bool> {
        self.0.set_hostname(name_or_id, hostname)
    }

    /// Gives a stopped VE these NICs (a NIC on a network it stays on keeps
    /// its address and MAC unless another address is asked for).
    pub fn set_nics(
        self,
        name_or_id: &str,
        reqs: &[netns::nic::NicRequest],
    ) -> Result<Vec<netns::nic::Nic>> {
        self.0.set_nics(name_or_id, reqs)
    }

    /// Changes when a VE starts by itself (`--onboot`, `--boot-order`,
    /// `--restart`).
    pub fn set_autostart(
        self,
        name_or_id: &str,
        change: &crate::config::AutostartChange,
    ) -> Result<crate::config::Autostart> {
        self.0.set_autostart(name_or_id, change)
    }

    /// Attaches this terminal to a running VE's console (held by the
    /// supervisor) until Ctrl-], the end of input or the VE's stop.
    pub fn console(self, name_or_id: &str) -> Result<()> {
        let ve = self.0.resolve_existing(name_or_id)?;
        if self.0.alive_state_with(&ve, false)?.is_none() {
            return Err(Error::NotRunning(ve));
        }
        crate::console::attach(self.0.root(), &ve)
    }

    /// Writes a VE's console log to `out` (its last `lines` lines if given);
    /// with `follow`, then what comes, until the writer fails.
    pub fn logs(
        self,
        name_or_id: &str,
        lines: Option<usize>,
        follow: bool,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let ve = self.0.resolve_existing(name_or_id)?;
        crate::console::logs(self.0.root(), &ve, lines, follow, out)
    }

    /// Renames a stopped VE (crash-safe: a killed rename is finished by the
    /// next command on it); a hostname that was its name follows.
    pub fn rename(self, name_or_id: &str, new: &str) -> Result<crate::change::Renamed> {
        self.0.rename(name_or_id, new)
    }

    /// Stats of the named VEs (names or ids), or of every VE when `names` is
    /// empty. Read on several threads, as [`Ves::list_to_show`]: not for a
    /// process that goes on to start or enter VEs.
    pub fn stats(self, names: &[String]) -> Result<Vec<VeStats>> {
        self.0.stats(names)
    }
}

/// The networks of a host ([`Host::nets`]): [`list`](Nets::list) them,
/// [`get`](Nets::get) one's config or [`show`](Nets::show) it with its VEs,
/// [`create`](Nets::create) (or [`create_with`](Nets::create_with) more
/// settings), [`update`](Nets::update) settings, [`remove`](Nets::remove).
#[derive(Clone, Copy)]
pub struct Nets<'h>(&'h Host);

impl<'h> Nets<'h> {
    /// Every network, by id.
    pub fn list(self) -> Result<Vec<NetConfig>> {
        self.0.net_configs()
    }

    /// One network's config.
    pub fn get(self, name: &str) -> Result<NetConfig> {
        self.0.net(name)
    }

    /// Creates a network and its kernel side.
    pub fn create(self, o: &NetCreate) -> Result<NetConfig> {
        self.0.net_create(o)
    }

    /// Creates a network with settings beyond [`NetCreate`]'s (`--allow-host`).
    pub fn create_with(self, o: &NetCreate, more: &NetUpdate) -> Result<NetConfig> {
        self.0.net_create_with(o, more)
    }

    /// Changes a network's settings; the firewall follows at once, for running
    /// VEs too. Returns the new config.
    pub fn update(self, name: &str, u: &NetUpdate) -> Result<NetConfig> {
        self.0.net_update(name, u)
    }

    /// Removes a network; refused while a VE has a NIC on it.
    pub fn remove(self, name: &str) -> Result<()> {
        self.0.net_rm(name)
    }

    /// A network with the VEs on it.
    pub fn show(self, name: &str) -> Result<NetDetails> {
        self.0.net_show(name)
    }
}

/// The template store of a host ([`Host::templates`]): [`import`](Templates::import)
/// a tree as a new template or [`update`](Templates::update) one with a new
/// version, [`build`](Templates::build) a version by running a command;
/// [`list`](Templates::list) versions, a version's [`dir`](Templates::dir),
/// which VEs use which ([`usage`](Templates::usage)), a template's
/// [`log`](Templates::log); [`remove`](Templates::remove) versions, or
/// [`gc`](Templates::gc) the unused ones.
#[derive(Clone, Copy)]
pub struct Templates<'h>(&'h Host);

impl<'h> Templates<'h> {
    /// Imports a tree as the next version of template `name`. Returns the new
    /// version and warnings for the operator.
    pub fn import(
        self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        self.0.import_template(name, source, message, progress)
    }

    /// A version's tree (the overlay lower layer of its VEs).
    pub fn dir(self, v: &TemplateVersion) -> PathBuf {
        self.0.template_dir(v)
    }

    /// Every template version.
    pub fn list(self) -> Result<Vec<TemplateVersion>> {
        self.0.list_templates()
    }

    /// The versions of template `name` (all templates if `None`), oldest first,
    /// each with the VEs pinned to it.
    pub fn usage(self, name: Option<&str>) -> Result<Vec<TemplateUsage>> {
        self.0.template_usage(name)
    }

    /// [`Templates::usage`] with, for Debian-based versions, the package
    /// changes from each version's predecessor (from their dpkg databases).
    pub fn log(self, name: &str) -> Result<Vec<TemplateUsage>> {
        self.0.template_log(name)
    }

    /// Publishes a tree as the next version of an existing template (its VEs
    /// stay on the versions they are pinned to).
    pub fn update(
        self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        self.0.update_template(name, source, message, progress)
    }

    /// Removes `NAME@VERSION`, or every version of `NAME`; refused while a VE
    /// is pinned to one of them. Returns what was removed. What killed
    /// removals left is deleted first (a version being removed is no longer
    /// listed: removing it again finds no such version).
    pub fn remove(self, reference: &str) -> Result<Vec<TemplateVersion>> {
        self.0.remove_template(reference)
    }

    /// Removes every version that is neither the latest of its template nor
    /// used by a VE, and what killed removals left. Returns what was removed.
    pub fn gc(self) -> Result<Vec<TemplateVersion>> {
        self.0.gc_templates()
    }

    /// `template update NAME --run CMD`: runs `CMD` (with `/bin/sh -c`, its
    /// output passed through) in a throwaway build VE on the latest version of
    /// `name`, then publishes that version with the build's changes as the next
    /// one. A failed command publishes nothing; the build VE is destroyed
    /// either way (`template.rs` has the details).
    pub fn build(
        self,
        name: &str,
        command: &str,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        self.0.build_template(name, command, message, progress)
    }
}

/// The storage pool of a host ([`Host::storage`]): where it is
/// ([`dir`](Storage::dir)), its space and who uses it ([`info`](Storage::info)),
/// [`grow`](Storage::grow) it, [`check`](Storage::check) (and repair) what a
/// crash left in it.
#[derive(Clone, Copy)]
pub struct Storage<'h>(&'h Host);

impl<'h> Storage<'h> {
    /// The pool's directory (VE volumes and template versions live below it).
    pub fn dir(self) -> &'h Path {
        self.0.pool().dir()
    }

    /// Size, use and free space of the pool, with every VE's and template's use.
    pub fn info(self) -> Result<PoolInfo> {
        self.0.pool_info()
    }

    /// An image pool whose image file was deleted, moved or replaced while the
    /// pool is mounted from it (`create`, `start` and `grow` refuse then).
    pub fn lost_image(self) -> Option<LostImage> {
        self.0.lost_pool_image()
    }

    /// Grows the pool online: an image pool's file is enlarged to `size`, a
    /// device pool takes what its device has now; btrfs then grows into it.
    /// Shrinking is refused. Returns the new space.
    pub fn grow(self, size: Option<u64>) -> Result<quota::PoolSpace> {
        self.0.pool_grow(size)
    }

    /// Finds (and with `repair`, fixes) what a crash can leave in the pool: a VE
    /// volume without a config (a killed create or destroy: removed), an
    /// upgrade or rollback left pending (finished), a config without a volume
    /// (an empty private layer is made, so the VE starts from its template
    /// again), qgroups of deleted subvolumes (removed).
    pub fn check(self, repair: bool) -> Result<Vec<PoolProblem>> {
        self.0.pool_check(repair)
    }
}

/// Snapshots of VEs' private layers ([`Host::snapshots`]):
/// [`create`](Snapshots::create), [`list`](Snapshots::list),
/// [`remove`](Snapshots::remove), [`restore`](Snapshots::restore).
#[derive(Clone, Copy)]
pub struct Snapshots<'h>(&'h Host);

impl<'h> Snapshots<'h> {
    /// Takes snapshot `name` of a VE's private layer: frozen while running,
    /// as it is while stopped.
    pub fn create(self, name_or_id: &str, name: &str) -> Result<SnapshotMade> {
        self.0.snapshot_create(name_or_id, name)
    }

    /// A VE's snapshots, with the VE's name.
    pub fn list(self, name_or_id: &str) -> Result<(String, Vec<quota::SnapshotInfo>)> {
        self.0.snapshot_list(name_or_id)
    }

    /// Deletes a VE's snapshot; returns the VE's name.
    pub fn remove(self, name_or_id: &str, name: &str) -> Result<String> {
        self.0.snapshot_remove(name_or_id, name)
    }

    /// Puts a stopped VE's private layer back to a snapshot; its disk limit is
    /// kept. Returns the VE's name.
    pub fn restore(self, name_or_id: &str, name: &str) -> Result<String> {
        self.0.snapshot_restore(name_or_id, name)
    }
}

/// Moving VEs between template versions ([`Host::upgrades`]): the conflict
/// report ([`check`](Upgrades::check)), [`upgrade`](Upgrades::upgrade) one VE
/// or a whole [`fleet`](Upgrades::fleet), [`rollback`](Upgrades::rollback),
/// keep upgrades for good ([`commit`](Upgrades::commit),
/// [`commit_all`](Upgrades::commit_all)), a VE's [`history`](Upgrades::history).
/// Every move is crash safe through a pending history entry (`upgrade.rs`).
#[derive(Clone, Copy)]
pub struct Upgrades<'h>(&'h Host);

impl<'h> Upgrades<'h> {
    /// The conflict report of moving VE `name` to template version `target`.
    pub fn check(self, name: &str, target: &str) -> Result<UpgradeCheck> {
        self.0.upgrade_check(name, target)
    }

    /// Moves VE `name` to template version `target`: refused on conflicts
    /// unless `force`; its own files are snapshotted first (what `rollback`
    /// restores); a running VE is stopped (`stop`) and started again.
    pub fn upgrade(
        self,
        name: &str,
        target: &str,
        force: bool,
        stop: StopOptions,
    ) -> Result<Moved> {
        self.0.upgrade(name, target, force, stop)
    }

    /// Undoes VE `name`'s latest upgrade that is not rolled back yet: its own
    /// files exactly as they were before it (the snapshot) and the version it
    /// came from. A running VE is stopped and started again. If a move of the
    /// VE was killed, finishing it is the whole rollback: a killed upgrade is
    /// undone, a killed rollback completed (the VE stays stopped).
    pub fn rollback(self, name: &str, stop: StopOptions) -> Result<Moved> {
        self.0.rollback(name, stop)
    }

    /// Moves every VE on template version `from` to `to`, `batch` at a time (by
    /// id; VEs skipped for conflicts take no place in a batch). After each
    /// batch, `health` runs (`sh -c`, output discarded) in each VE of it that
    /// runs, again until it succeeds or `health_timeout` has passed; a VE whose
    /// check fails is rolled back and the rollout stops there, as it does on
    /// any other failure. VEs with conflicts are skipped unless `force`.
    /// `progress` sees each VE's row once its outcome is known. Returns a row
    /// per VE, in order, including those never reached.
    pub fn fleet(
        self,
        from: &str,
        to: &str,
        opts: &Rollout,
        progress: &mut dyn FnMut(&FleetRow),
    ) -> Result<Vec<FleetRow>> {
        self.0.upgrade_fleet(from, to, opts, progress)
    }

    /// Keeps VE `name`'s upgrades for good: after it `rollback` has nothing
    /// to undo, the versions they came from are no longer kept for the VE
    /// (`template gc` may remove them) and their snapshots are deleted (also
    /// those of upgrades rolled back since the last commit). Doing it again is
    /// harmless; it deletes what a killed commit left.
    pub fn commit(self, name: &str) -> Result<Committed> {
        self.0.commit(name)
    }

    /// [`Upgrades::commit`] of every VE, or of those on template version `on`,
    /// that has upgrades to keep or their snapshots to delete (VEs with
    /// nothing to commit are left out); a VE that fails, or whose config
    /// cannot be read, is an error of its own and the others go on.
    pub fn commit_all(self, on: Option<&str>) -> Result<(Vec<Committed>, Vec<Error>)> {
        self.0.commit_all(on)
    }

    /// A VE's template moves, oldest first, with the VE's name.
    pub fn history(self, name: &str) -> Result<(String, Vec<TemplateMove>)> {
        self.0.history(name)
    }
}

/// Backups of VEs ([`Host::backups`]): [`backup`](Backups::backup) one VE or
/// [`all`](Backups::all), [`restore`](Backups::restore) one,
/// [`verify`](Backups::verify) a backup file, [`list`](Backups::list) a
/// directory's.
#[derive(Clone, Copy)]
pub struct Backups<'h>(&'h Host);

impl<'h> Backups<'h> {
    /// Backs up one VE (frozen for the moment of a snapshot while running).
    pub fn backup(self, name_or_id: &str, opts: &BackupOptions) -> Result<BackupMade> {
        self.0.backup(name_or_id, opts)
    }

    /// Backs up every VE, one after the other; each VE's outcome.
    pub fn all(self, opts: &BackupOptions) -> Result<Vec<(String, Result<BackupMade>)>> {
        self.0.backup_all(opts)
    }

    /// Makes a (stopped, or with `start` started) VE from a backup file.
    pub fn restore(self, file: &Path, opts: &RestoreOptions) -> Result<Restored> {
        self.0.restore(file, opts)
    }

    /// Reads a backup file through and checks it and its chain.
    pub fn verify(self, file: &Path) -> Result<Verified> {
        self.0.backup_verify(file)
    }

    /// The backups in a directory (default `ROOT/backups`).
    pub fn list(self, dir: Option<&Path>) -> Result<Vec<BackupEntry>> {
        self.0.backup_list(dir)
    }

    /// Moves a VE to another root (this host's or over SSH another's):
    /// pre-copy rounds while it runs, then stop, a last delta, start there.
    pub fn migrate(
        self,
        name_or_id: &str,
        opts: &crate::MigrateOptions,
    ) -> Result<crate::Migrated> {
        self.0.migrate(name_or_id, opts)
    }

    /// Imports a server's system (over SSH, from a directory or a tar
    /// archive) as template `name`, adapted for a VE, and a VE of that name.
    pub fn import_host(
        self,
        name: &str,
        opts: &crate::ImportHostOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<crate::HostImported> {
        self.0.import_host(name, opts, progress)
    }

    /// Replicates a VE once: to `dest`, or (`None`) as its schedule says.
    pub fn replicate(
        self,
        name_or_id: &str,
        dest: Option<&crate::ReplicaSchedule>,
    ) -> Result<crate::Replicated> {
        self.0.replicate(name_or_id, dest)
    }

    /// Records a VE's replication schedule (the supervisor runs it), or
    /// removes it; returns the VE's name.
    pub fn set_schedule(
        self,
        name_or_id: &str,
        schedule: Option<&crate::ReplicaSchedule>,
    ) -> Result<String> {
        self.0.set_replica_schedule(name_or_id, schedule)
    }

    /// This root's replication schedules and how each last ran.
    #[allow(clippy::type_complexity)]
    pub fn schedules(
        self,
    ) -> Result<Vec<(String, crate::ReplicaSchedule, Option<crate::ReplicaRun>)>> {
        self.0.replica_schedules()
    }

    /// The replicas this root keeps as a standby.
    pub fn replicas(self) -> Result<Vec<crate::ReplicaInfo>> {
        self.0.replica_list()
    }

    /// Starts the newest replica of a VE here, once its primary is gone.
    pub fn failover(self, name: &str, opts: &crate::FailoverOptions) -> Result<crate::FailedOver> {
        self.0.failover(name, opts)
    }

    /// The standby's end of a replication. `Ok(Some(e))`: it failed and the
    /// source was told so (see [`migrate_receive`](Self::migrate_receive)).
    pub fn replica_receive(
        self,
        name: &str,
        input: impl std::io::Read,
        output: impl std::io::Write,
    ) -> Result<Option<Error>> {
        self.0.replica_receive(name, input, output)
    }

    /// The target's end of a migration: reads the source's messages from
    /// `input` and answers on `output`. `Ok(Some(e))`: it failed and the
    /// source was told so, which reports it (the caller need not);
    /// `Err(e)`: it failed and the source could not be told.
    pub fn migrate_receive(
        self,
        name: &str,
        input: impl std::io::Read,
        output: impl std::io::Write,
    ) -> Result<Option<Error>> {
        self.0.migrate_receive(name, input, output)
    }
}
