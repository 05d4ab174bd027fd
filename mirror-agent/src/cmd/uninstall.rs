//! `mirror-agent uninstall`: remove what agents left pinned, hooks first
//! (each detaches once its pin goes, as no process holds it), then the maps.

use tracing::info;

use crate::{
    cli::UninstallArgs,
    kernel::pin::{PinDir, PinError},
};

pub fn run(args: &UninstallArgs) -> Result<(), PinError> {
    if !args.pin_dir.exists() {
        info!(pin_dir = %args.pin_dir.display(), "nothing pinned there; nothing to do");
        return Ok(());
    }
    let pins = PinDir::open(&args.pin_dir)?;
    let mut hooks = 0;
    for key in pins.links()? {
        let path = pins.link(key);
        std::fs::remove_file(&path).map_err(|source| PinError::Io { path, source })?;
        hooks += 1;
    }
    let other_abis = pins.other_abis()?.len();
    pins.remove_all()?;
    info!(pin_dir = %args.pin_dir.display(), hooks, map_sets = other_abis + 1, "uninstalled");
    Ok(())
}
