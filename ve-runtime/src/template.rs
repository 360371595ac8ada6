//! Templates as the host sees them: the template store backed by the pool.

use std::io;
use std::path::Path;

use ve_templates::{Progress, Source, TemplateVersion, VolumeOps};

use crate::error::Result;
use crate::host::Host;

/// The pool's volumes, as the template store needs them.
struct PoolVolumes<'a>(&'a quota::Pool);

fn to_io(e: quota::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl VolumeOps for PoolVolumes<'_> {
    fn create(&self, path: &Path) -> io::Result<()> {
        self.0.create_dir_volume(path).map_err(to_io)
    }
    fn seal(&self, path: &Path) -> io::Result<()> {
        self.0.seal_volume(path).map_err(to_io)
    }
    fn delete(&self, path: &Path) -> io::Result<()> {
        self.0.delete_volume(path).map_err(to_io)
    }
    fn usage(&self, path: &Path) -> io::Result<(u64, u64)> {
        quota::usage(path)
            .map(|u| (u.bytes, u.files))
            .map_err(to_io)
    }
}

impl Host {
    /// Imports a tree as the next version of template `name`. Returns the new
    /// version and warnings for the operator.
    pub fn import_template(
        &self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        Ok(self
            .templates()
            .import(name, source, message, &PoolVolumes(self.pool()), progress)?)
    }

    /// Every template version.
    pub fn list_templates(&self) -> Result<Vec<TemplateVersion>> {
        Ok(self.templates().list()?)
    }
}
