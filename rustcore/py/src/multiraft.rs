//! `pyagent._core.MultiRaft`: the binding of `pyagent_core::multiraft::Driver`. Conversions and
//! error mapping only; the behaviour and its tests live in the pure crate.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use pyagent_core::multiraft::{self, ConfChangeKind, Driver, EntryKind, Write};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

pyo3::create_exception!(
    pyagent._core,
    RaftFatalError,
    PyException,
    "raft-rs panicked inside the driver; the driver is poisoned and every later call raises this."
);
pyo3::create_exception!(
    pyagent._core,
    NotLeaderError,
    PyException,
    "The replica is not the leader. `leader_id` (an attribute) is the leader it knows of, 0 when none."
);

fn raft_error(py: Python<'_>, error: multiraft::Error) -> PyErr {
    match error {
        multiraft::Error::Fatal(reason) => RaftFatalError::new_err(reason),
        multiraft::Error::Invalid(reason) => PyValueError::new_err(reason),
        error @ multiraft::Error::NotLeader { leader_id } => {
            let err = NotLeaderError::new_err(error.to_string());
            // An instance attribute; the class carries a default of 0 for the stub checker.
            if let Err(failed) = err.value(py).setattr("leader_id", leader_id) {
                return failed;
            }
            err
        }
    }
}

fn write_tuple<'py>(py: Python<'py>, write: &Write) -> PyResult<Bound<'py, PyTuple>> {
    match write {
        Write::Put { key, value } => PyTuple::new(
            py,
            [
                "put".into_pyobject(py)?.into_any(),
                PyBytes::new(py, key).into_any(),
                PyBytes::new(py, value).into_any(),
            ],
        ),
        Write::Append {
            log,
            first_index,
            entries,
        } => {
            let entries = PyList::new(py, entries.iter().map(|e| PyBytes::new(py, e)))?;
            PyTuple::new(
                py,
                [
                    "append".into_pyobject(py)?.into_any(),
                    log.into_pyobject(py)?.into_any(),
                    first_index.into_pyobject(py)?.into_any(),
                    entries.into_any(),
                ],
            )
        }
        Write::Truncate { log, from_index } => ("truncate", log, from_index).into_pyobject(py),
        Write::Compact { log, to_index } => ("compact", log, to_index).into_pyobject(py),
    }
}

fn writes_list<'py>(py: Python<'py>, writes: &[Write]) -> PyResult<Bound<'py, PyList>> {
    let tuples = writes
        .iter()
        .map(|write| write_tuple(py, write))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, tuples)
}

fn frames_list<'py>(py: Python<'py>, frames: &[(u64, Vec<u8>)]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(
        py,
        frames
            .iter()
            .map(|(to, frame)| (*to, PyBytes::new(py, frame))),
    )
}

/// One batch of every group's work; see `MultiRaft.ready` and the stub for the contract.
#[pyclass(module = "pyagent._core", frozen)]
struct RaftReady {
    #[pyo3(get)]
    token: u64,
    #[pyo3(get)]
    must_sync: bool,
    #[pyo3(get)]
    writes: Py<PyList>,
    #[pyo3(get)]
    send_now: Py<PyList>,
    #[pyo3(get)]
    send_after_persist: Py<PyList>,
    #[pyo3(get)]
    committed: Py<PyList>,
    #[pyo3(get)]
    read_states: Py<PyList>,
    #[pyo3(get)]
    snapshots_out: Py<PyList>,
    #[pyo3(get)]
    snapshot_installed: Py<PyList>,
    #[pyo3(get)]
    needs_snapshot: Py<PyList>,
    #[pyo3(get)]
    created: Py<PyList>,
    #[pyo3(get)]
    roles: Py<PyList>,
}

impl RaftReady {
    fn new(py: Python<'_>, ready: multiraft::Ready) -> PyResult<Self> {
        let committed = ready.committed.iter().map(|c| {
            let kind = match c.kind {
                EntryKind::Normal => 0u8,
                EntryKind::ConfChange => 1,
            };
            (c.group_id, c.index, c.term, kind, PyBytes::new(py, &c.data))
        });
        let read_states = ready
            .read_states
            .iter()
            .map(|(group, ctx, index)| (*group, PyBytes::new(py, ctx), *index));
        let snapshots_out = ready
            .snapshots_out
            .iter()
            .map(|(group, to, message)| (*group, *to, PyBytes::new(py, message)));
        let roles = ready
            .roles
            .iter()
            .map(|r| (r.group_id, r.role.as_str(), r.term, r.leader_id));
        Ok(Self {
            token: ready.token,
            must_sync: ready.must_sync,
            writes: writes_list(py, &ready.writes)?.unbind(),
            send_now: frames_list(py, &ready.send_now)?.unbind(),
            send_after_persist: frames_list(py, &ready.send_after_persist)?.unbind(),
            committed: PyList::new(py, committed)?.unbind(),
            read_states: PyList::new(py, read_states)?.unbind(),
            snapshots_out: PyList::new(py, snapshots_out)?.unbind(),
            snapshot_installed: PyList::new(py, &ready.snapshot_installed)?.unbind(),
            needs_snapshot: PyList::new(py, &ready.needs_snapshot)?.unbind(),
            created: PyList::new(py, &ready.created)?.unbind(),
            roles: PyList::new(py, roles)?.unbind(),
        })
    }
}

/// Every raft group of this node. Not re-entrant by design (one task owns it), but safe to
/// call from several threads: calls are serialized by a lock that is only ever taken and
/// released entirely with the GIL held or entirely with it released, so they cannot deadlock.
#[pyclass(module = "pyagent._core", frozen)]
struct MultiRaft {
    driver: Mutex<Driver>,
}

impl MultiRaft {
    fn driver(&self) -> MutexGuard<'_, Driver> {
        // The driver catches its own panics, so a poisoned lock holds a consistent driver.
        self.driver.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Driver) -> multiraft::Result<R>,
    ) -> PyResult<R> {
        f(&mut self.driver()).map_err(|error| raft_error(py, error))
    }
}

fn conf_change_kind(name: &str) -> PyResult<ConfChangeKind> {
    match name {
        "add_voter" => Ok(ConfChangeKind::AddVoter),
        "add_learner" => Ok(ConfChangeKind::AddLearner),
        "remove" => Ok(ConfChangeKind::Remove),
        _ => Err(PyValueError::new_err(format!(
            "unknown conf change {name:?} (add_voter, add_learner or remove)"
        ))),
    }
}

#[pymethods]
impl MultiRaft {
    #[classattr]
    const INIT_INDEX: u64 = multiraft::INIT_INDEX;

    #[new]
    #[pyo3(signature = (node_id, seed, *, election_tick = 10, heartbeat_tick = 2,
        max_size_per_msg = 1_048_576, max_inflight_msgs = 256, group_id_max = 1_048_576))]
    fn new(
        node_id: u64,
        seed: u64,
        election_tick: usize,
        heartbeat_tick: usize,
        max_size_per_msg: u64,
        max_inflight_msgs: usize,
        group_id_max: u64,
    ) -> PyResult<Self> {
        let config = multiraft::Config {
            node_id,
            seed,
            election_tick,
            heartbeat_tick,
            max_size_per_msg,
            max_inflight_msgs,
            group_id_max,
        };
        // Only a bad config can fail here.
        let driver =
            Driver::new(config).map_err(|error| PyValueError::new_err(error.to_string()))?;
        Ok(Self {
            driver: Mutex::new(driver),
        })
    }

    fn bootstrap_group(&self, py: Python<'_>, group_id: u64, voters: Vec<u64>) -> PyResult<()> {
        self.call(py, |d| d.bootstrap_group(group_id, &voters))
    }

    fn create_group(&self, py: Python<'_>, group_id: u64) -> PyResult<()> {
        self.call(py, |d| d.create_group(group_id))
    }

    fn recover(
        &self,
        py: Python<'_>,
        kvs: Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)>,
        logs: BTreeMap<String, (u64, Vec<Bound<'_, PyBytes>>)>,
        applied: BTreeMap<u64, u64>,
    ) -> PyResult<Vec<u64>> {
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = kvs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let logs: BTreeMap<String, (u64, Vec<Vec<u8>>)> = logs
            .into_iter()
            .map(|(name, (first, entries))| {
                let entries = entries.iter().map(|e| e.as_bytes().to_vec()).collect();
                (name, (first, entries))
            })
            .collect();
        let recovered = py.detach(|| self.driver().recover(&kvs, &logs, &applied));
        recovered.map_err(|error| raft_error(py, error))
    }

    fn groups(&self) -> Vec<u64> {
        self.driver().groups()
    }

    fn tick(&self, py: Python<'_>) -> PyResult<()> {
        let result = py.detach(|| self.driver().tick());
        result.map_err(|error| raft_error(py, error))
    }

    fn peer_down(&self, py: Python<'_>, node: u64) -> PyResult<()> {
        self.call(py, |d| d.peer_down(node))
    }

    fn peer_up(&self, py: Python<'_>, node: u64) -> PyResult<()> {
        self.call(py, |d| d.peer_up(node))
    }

    fn step(&self, py: Python<'_>, from_node: u64, frame: &[u8]) -> PyResult<()> {
        let result = py.detach(|| self.driver().step(from_node, frame));
        result.map_err(|error| raft_error(py, error))
    }

    fn step_snapshot(
        &self,
        py: Python<'_>,
        from_node: u64,
        group_id: u64,
        message: &[u8],
        index: u64,
    ) -> PyResult<()> {
        self.call(py, |d| d.step_snapshot(from_node, group_id, message, index))
    }

    fn propose(&self, py: Python<'_>, group_id: u64, data: &[u8]) -> PyResult<u64> {
        self.call(py, |d| d.propose(group_id, data))
    }

    fn propose_conf_change(
        &self,
        py: Python<'_>,
        group_id: u64,
        changes: Vec<(String, u64)>,
    ) -> PyResult<()> {
        let changes = changes
            .iter()
            .map(|(name, node_id)| Ok((conf_change_kind(name)?, *node_id)))
            .collect::<PyResult<Vec<_>>>()?;
        self.call(py, |d| d.propose_conf_change(group_id, &changes))
    }

    fn read_index(&self, py: Python<'_>, group_id: u64, ctx: &[u8]) -> PyResult<()> {
        self.call(py, |d| d.read_index(group_id, ctx))
    }

    fn transfer_leader(&self, py: Python<'_>, group_id: u64, to: u64) -> PyResult<()> {
        self.call(py, |d| d.transfer_leader(group_id, to))
    }

    fn has_ready(&self, py: Python<'_>) -> PyResult<bool> {
        self.call(py, |d| d.has_ready())
    }

    fn ready(&self, py: Python<'_>) -> PyResult<RaftReady> {
        let ready = py.detach(|| self.driver().ready());
        RaftReady::new(py, ready.map_err(|error| raft_error(py, error))?)
    }

    fn on_persisted(&self, py: Python<'_>, token: u64) -> PyResult<()> {
        self.call(py, |d| d.on_persisted(token))
    }

    fn apply_conf_change<'py>(
        &self,
        py: Python<'py>,
        group_id: u64,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let writes = self.call(py, |d| d.apply_conf_change(group_id, data))?;
        writes_list(py, &writes)
    }

    fn advance_apply(&self, py: Python<'_>, group_id: u64, applied: u64) -> PyResult<()> {
        self.call(py, |d| d.advance_apply(group_id, applied))
    }

    fn register_snapshot(&self, py: Python<'_>, group_id: u64, applied: u64) -> PyResult<()> {
        self.call(py, |d| d.register_snapshot(group_id, applied))
    }

    fn compact<'py>(
        &self,
        py: Python<'py>,
        group_id: u64,
        to_index: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let writes = self.call(py, |d| d.compact(group_id, to_index))?;
        writes_list(py, &writes)
    }

    fn report_snapshot(&self, py: Python<'_>, group_id: u64, to: u64, ok: bool) -> PyResult<()> {
        self.call(py, |d| d.report_snapshot(group_id, to, ok))
    }

    fn report_unreachable(&self, py: Python<'_>, group_id: u64, to: u64) -> PyResult<()> {
        self.call(py, |d| d.report_unreachable(group_id, to))
    }

    fn status<'py>(&self, py: Python<'py>, group_id: u64) -> PyResult<Bound<'py, PyDict>> {
        let status = self.call(py, |d| d.status(group_id))?;
        let dict = PyDict::new(py);
        dict.set_item("role", status.role.as_str())?;
        dict.set_item("term", status.term)?;
        dict.set_item("leader_id", status.leader_id)?;
        dict.set_item("commit", status.commit)?;
        dict.set_item("applied", status.applied)?;
        dict.set_item("first_index", status.first_index)?;
        dict.set_item("last_index", status.last_index)?;
        dict.set_item("voters", status.voters)?;
        dict.set_item("voters_outgoing", status.voters_outgoing)?;
        dict.set_item("learners", status.learners)?;
        dict.set_item("quiet", status.quiet)?;
        if let Some(progress) = status.progress {
            let progress: BTreeMap<u64, u64> = progress.into_iter().collect();
            dict.set_item("progress", progress)?;
        }
        Ok(dict)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<MultiRaft>()?;
    m.add_class::<RaftReady>()?;
    m.add("RaftFatalError", py.get_type::<RaftFatalError>())?;
    let not_leader = py.get_type::<NotLeaderError>();
    not_leader.setattr("leader_id", 0)?;
    m.add("NotLeaderError", not_leader)?;
    Ok(())
}
