//! The kernel's announcements of links created, changed or deleted in the
//! agent's own network namespace (rtnetlink's link group). `run` uses them
//! to look for its pods' interfaces again when one goes or comes back with
//! no change in the cluster: a CNI re-plumbing a pod, a veth deleted and
//! added again under a new index or name.
//!
//! Only that something changed is passed on, not what: the caller looks
//! again at what it cares about, so a lost announcement (the socket's
//! buffer overrun) costs nothing but a look.

use std::{io, thread};

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::libc;
use tracing::warn;

/// A burst (a node starting many pods) fits; an overrun is only a wake-up.
const RECV_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkEventsError {
    #[error("subscribing to the kernel's link changes: {0}")]
    Subscribe(#[source] io::Error),
    #[error("starting the thread that reads the kernel's link changes: {0}")]
    Thread(#[source] io::Error),
}

/// Calls `changed` after each announcement of a link change in the calling
/// thread's network namespace, from a thread of its own, for as long as the
/// process runs. The socket is opened here, so in the caller's namespace.
pub fn watch(changed: impl Fn() + Send + 'static) -> Result<(), LinkEventsError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(LinkEventsError::Subscribe)?;
    socket.bind_auto().map_err(LinkEventsError::Subscribe)?;
    socket
        .add_membership(libc::RTNLGRP_LINK)
        .map_err(LinkEventsError::Subscribe)?;
    thread::Builder::new()
        .name("link-events".into())
        .spawn(move || read(&socket, &changed))
        .map_err(LinkEventsError::Thread)?;
    Ok(())
}

fn read(socket: &Socket, changed: &dyn Fn()) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(_) => changed(),
            // Announcements were lost: something changed all the same.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                warn!(
                    %error,
                    "reading the kernel's link changes failed; pods' interfaces are now \
                     looked for again only on the periodic check"
                );
                return;
            }
        }
    }
}
