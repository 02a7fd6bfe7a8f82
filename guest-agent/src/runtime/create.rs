//! CreateContainer, and running the runtime helper (see `helper`).

use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{mpsc, Arc, Mutex},
};

use firedoor_protocol::agent::CreateContainerRequest;
use log::info;

use super::{check_id, enabled, lock, Container, Process, Runtime};
use crate::{
    cgroup::{
        devices::{self, DeviceFilter},
        Cgroup,
    },
    error::{AgentError, Result},
    helper,
    namespaces::{self, Joinable},
    oom::OomCounter,
    signals, spec,
    streams::{ConsoleSocket, ProcessSide, Streams},
};

impl Runtime {
    pub fn create(&self, req: &CreateContainerRequest) -> Result<u32> {
        let id = req.container_id.as_str();
        check_id("container_id", id)?;
        let exists = lock(&self.containers).contains_key(id);
        let _reservation = self.reserve(format!("container {id}"), exists)?;
        let (streams, terminal) = enabled(req.stdio.as_ref());

        let mut spec = spec::parse_spec(&req.oci_spec_json)?;
        let cgroup_path = format!("{}/{id}", self.opts.cgroup_parent.trim_end_matches('/'));
        let init_pids = self.live_init_pids();
        let joinable = Joinable {
            init_pids: &init_pids,
            pod_netns: &self.opts.pod_netns,
        };
        let pod_netns = spec::prepare(
            &mut spec,
            Path::new(&req.rootfs),
            &self.opts.roots,
            &cgroup_path,
            terminal,
            &joinable,
        )?;
        if pod_netns {
            namespaces::ensure_pod_netns(&self.opts.pod_netns)?;
        }
        if let Some(volumes) = &self.volumes {
            volumes.attach(id, &mut spec)?;
        }
        let dir = self.containers_dir().join(id);
        let cgroup = Cgroup::new(&self.opts.cgroup_mount, &cgroup_path);
        let result = self.create_in(id, &spec, &dir, &cgroup, streams, terminal);
        match result {
            Ok(container) => {
                // The PID of a process that started is positive.
                let pid = container.init.pid.cast_unsigned();
                lock(&self.containers).insert(id.into(), container);
                info!("created container {id} (init pid {pid})");
                Ok(pid)
            }
            Err(e) => {
                if let Some(volumes) = &self.volumes {
                    volumes.detach(id);
                }
                let _ = cgroup.destroy();
                let _ = fs::remove_dir_all(self.runtime_dir().join(id));
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Init pids of the containers whose namespaces others may join.
    fn live_init_pids(&self) -> Vec<i32> {
        lock(&self.containers)
            .values()
            .filter(|c| c.init.exit().is_none())
            .map(|c| c.init.pid)
            .collect()
    }

    fn create_in(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        dir: &Path,
        cgroup: &Cgroup,
        enabled: [bool; 3],
        terminal: bool,
    ) -> Result<Arc<Container>> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            AgentError::internal(format!("container {id}: {what}"), e)
        };
        fs::create_dir_all(dir).map_err(|e| internal("creating its directory", &e))?;
        fs::write(dir.join("cgroup"), cgroup.path()).map_err(|e| internal("state", &e))?;
        spec.save(dir.join("config.json"))
            .map_err(|e| internal("writing config.json", &e))?;
        let (side, streams) =
            Streams::new(enabled, terminal).map_err(|e| internal("stdio pipes", &e))?;
        let console = self.console_socket();
        let request = helper::Request {
            state_root: self.runtime_dir(),
            id: id.into(),
            result: dir.join("create.result"),
            console_socket: terminal.then(|| console.clone()),
            job: helper::Job::Create {
                bundle: dir.to_owned(),
                no_pivot: self.opts.no_pivot,
            },
        };
        // Checked before the helper runs so that a bad rule costs nothing.
        let device_rules = devices::container_rules(
            spec.linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .and_then(|r| r.devices().as_ref()),
        )?;
        let (pid, master) = self.run_helper(&request, side, &format!("creating container {id}"))?;
        // libcontainer (built without its cgroupsv2_devices feature) leaves
        // device access to us. The container's init waits for StartContainer
        // before it runs the container's program, so the filter is in place
        // before any of the container's code runs; the device nodes
        // libcontainer made in /dev were made without it, as the default
        // rules would allow anyway.
        let device_filter = DeviceFilter::attach(&cgroup.dir(), &device_rules, None)
            .map_err(|e| AgentError::Internal(format!("container {id}: {e}")))?;
        if let Some(master) = master {
            streams
                .set_terminal(
                    master,
                    enabled[0],
                    true,
                    crate::streams::console_size(spec.process().as_ref()),
                )
                .map_err(|e| internal("terminal", &e))?;
        }
        let oom = OomCounter::new(id, cgroup.clone());
        let container = Arc::new(Container {
            id: id.into(),
            cgroup: cgroup.clone(),
            dir: dir.to_owned(),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            init: Process::new(pid, streams),
            execs: Mutex::new(HashMap::new()),
            started: Mutex::new(false),
            oom: oom.clone(),
            devices: Mutex::new(device_filter),
        });
        let init = container.init.clone();
        let events = self.oom.clone();
        signals::watch(pid, move |exit| {
            // The OOM event goes out before the exit is visible.
            events.check(&oom);
            init.set_exit(exit);
        });
        self.oom.watch(&container.oom);
        Ok(container)
    }

    /// Runs the runtime helper and returns the pid it reports and, for a
    /// terminal, the pty master it sent on the console socket.
    pub(super) fn run_helper(
        &self,
        request: &helper::Request,
        side: ProcessSide,
        what: &str,
    ) -> Result<(i32, Option<fs::File>)> {
        let console = match &request.console_socket {
            Some(path) => Some(
                ConsoleSocket::bind(path)
                    .map_err(|e| AgentError::internal(format!("{what}: console socket"), e))?,
            ),
            None => None,
        };
        let file = request.result.with_extension("request");
        let command = request.command(&self.opts.exe, &file);
        let mut command = match command {
            Ok(command) => command,
            Err(e) => {
                let _ = fs::remove_file(&file);
                return Err(AgentError::internal(format!("{what}: helper request"), e));
            }
        };
        command
            .stdin(side.stdin)
            .stdout(side.stdout)
            .stderr(side.stderr);
        let (tx, rx) = mpsc::channel();
        let child = signals::spawn(&mut command, move |exit| {
            let _ = tx.send(exit);
        })
        .map_err(|e| AgentError::internal(format!("{what}: starting the runtime helper"), e))?;
        // Our copies of the process's stdio ends must not keep its pipes open.
        drop(command);
        drop(child);
        let exit = rx.recv();
        let _ = fs::remove_file(&file);
        if let Some(path) = &request.console_socket {
            // The connection, if any, waits in the listener.
            let _ = fs::remove_file(path);
        }
        let exit = exit.map_err(|e| AgentError::internal(format!("{what}: runtime helper"), e))?;
        let text = fs::read_to_string(&request.result).unwrap_or_default();
        let _ = fs::remove_file(&request.result);
        if exit.status != 0 {
            let why = if text.is_empty() {
                format!("runtime helper exited with status {}", exit.status)
            } else {
                text
            };
            return Err(AgentError::Internal(format!("{what}: {why}")));
        }
        let pid = text.trim().parse::<i32>().map_err(|_| {
            AgentError::Internal(format!("{what}: runtime helper reported {text:?}"))
        })?;
        let master =
            match console {
                Some(console) => Some(console.receive().map_err(|e| {
                    AgentError::internal(format!("{what}: receiving the terminal"), e)
                })?),
                None => None,
            };
        Ok((pid, master))
    }
}
