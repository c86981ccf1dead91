//! What the private test servers (redis-server, memcached) share: a free port, and a child
//! process that can be killed, paused and resumed, and is killed on drop.

use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::process::{Child, Command};

/// Runs `command` with `run` (`Command::spawn`, `status`, `output`). A program that is not
/// installed panics with one line naming its Debian `package`, instead of an OS error that says
/// only "No such file or directory".
#[track_caller]
pub fn run_installed<T>(
    command: &mut Command,
    package: &str,
    run: impl FnOnce(&mut Command) -> io::Result<T>,
) -> T {
    match run(command) {
        Ok(ran) => ran,
        Err(err) => {
            let program = command.get_program().to_string_lossy();
            if err.kind() == ErrorKind::NotFound {
                panic!(
                    "{program} is not installed: run scripts/test.sh or apt-get install {package}"
                )
            }
            panic!("{program} does not start: {err}")
        }
    }
}

/// A free loopback port (free now; a server may still lose it to a race, so callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A server process, or none (not started yet, or killed).
#[derive(Default)]
pub struct ServerProcess(Option<Child>);

impl ServerProcess {
    pub fn running(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections (and the kernel accepts new ones) but answers
    /// nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.0.as_ref().expect("server running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A paused server ignores nothing but SIGKILL, which is what kill sends.
        self.kill();
    }
}
