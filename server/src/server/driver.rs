//! The hubs' driver: connections registered into their facility's shard, frames fed to the
//! hub through the shard's inbox and drainer, the hub's actions executed (sends, persists,
//! audit, quarantine), held documents released after their flush, whole documents merged.

use super::*;
use crate::sync::outlet::Outbound;

impl Shared {
    /// Register a connection; refused when the device has too many open already.
    pub async fn register(
        &self,
        conn: ConnId,
        tx: crate::sync::outlet::Outlet,
        device: Device,
    ) -> Result<(), String> {
        let access: Arc<dyn Access> = match &device.facility {
            Some(f) => Arc::new(FacilityAccess {
                facility: f.clone(),
                index: self.index.clone(),
            }),
            None => Arc::new(crate::sync::access::DevAccess),
        };
        let home = self.shard_for(device.facility.as_deref());
        let name = device.name.clone();
        {
            let mut conns = self.conns();
            let open = conns.device_conns.entry(device.name.clone()).or_default();
            if *open >= self.limits.connections_per_device {
                return Err(format!(
                    "device {} already has {} connections open (limit {})",
                    device.name, open, self.limits.connections_per_device
                ));
            }
            *open += 1;
            conns.senders.insert(conn, tx);
            conns.info.insert(
                conn,
                ConnInfo {
                    device,
                    audited: HashSet::new(),
                    access: access.clone(),
                    home: home.clone(),
                    shards: vec![home.clone()],
                    join: None,
                },
            );
        }
        // Through the inbox, so the hub sees it before the connection's first frame.
        let _ = home
            .inbox()
            .send(ShardMsg::Connect {
                conn,
                access,
                device: name,
            })
            .await;
        Ok(())
    }

    /// Checks before a frame is processed: revocation (takes effect on the next frame) and
    /// the device's frame rate.
    pub fn admit_frame(&self, device: &Device) -> Result<(), String> {
        if device.facility.is_some() && self.security.is_revoked(&device.name) {
            return Err(format!("device {} has been revoked", device.name));
        }
        if !self.frame_limiter.allow(&device.name) {
            return Err(format!(
                "device {} exceeded its request rate; slow down and reconnect",
                device.name
            ));
        }
        Ok(())
    }

    fn audit_for(&self, conn: ConnId, action: &str, doc: Option<&str>, detail: Option<String>) {
        let rec = self.audit_record_for(conn, action, doc, detail);
        self.security.record(rec);
    }

    /// A connection's audit record: its device, facility, document and that document's patient.
    fn audit_record_for(
        &self,
        conn: ConnId,
        action: &str,
        doc: Option<&str>,
        detail: Option<String>,
    ) -> AuditRecord {
        let mut rec = AuditRecord::new(action);
        let device = self
            .conns()
            .info
            .get(&conn)
            .map(|i| (i.device.name.clone(), i.device.facility.clone()));
        if let Some((name, facility)) = device {
            rec.device = Some(name);
            if let (Some(f), Some(d)) = (&facility, doc.and_then(|d| d.parse::<DocumentId>().ok()))
            {
                rec.patient = self.index.lookup(f, &d).flatten();
            }
            rec.facility = facility;
        }
        rec.document = doc.map(str::to_string);
        rec.detail = detail;
        rec
    }

    fn sender(&self, conn: ConnId) -> Option<crate::sync::outlet::Outlet> {
        self.conns().senders.get(&conn).cloned()
    }

    /// Carry out hub actions; returns whether something was persisted (a flush is due).
    fn execute(&self, core: &mut ShardCore, actions: Vec<Action>) -> bool {
        let mut wrote = false;
        for action in actions {
            match action {
                Action::Send(conn, frame) => {
                    if let Some(tx) = self.sender(conn) {
                        let _ = tx.send(Outbound::Frame(frame));
                    }
                }
                Action::Close(conn, reason) => {
                    tracing::warn!(conn, %reason, "closing connection");
                    if let Some(tx) = self.sender(conn) {
                        let _ = tx.send(Outbound::Close(reason));
                    }
                }
                Action::Persist {
                    doc,
                    seq,
                    chunk,
                    snapshot,
                } => {
                    core.persisted.push(doc);
                    let heads = core.hub.heads(doc);
                    let stored = self.store.persist_with_heads(
                        &doc,
                        seq,
                        &chunk,
                        snapshot,
                        heads.as_deref(),
                    );
                    self.index.changed(&doc, || {
                        core.hub
                            .container_keys(doc, rounds_core::document::PATIENTS)
                            .map(|k| k.into_iter().collect())
                    });
                    if let Err(e) = stored {
                        // The document stays held (never flushed), so nothing unsaved is acknowledged.
                        tracing::error!(doc = %doc, error = %e, "could not store a chunk");
                    } else {
                        wrote = true;
                    }
                }
                Action::SaveSyncState {
                    doc,
                    peer_storage,
                    state,
                } => {
                    if let Err(e) = self.store.save_sync_state(&doc, &peer_storage, &state) {
                        tracing::warn!(doc = %doc, error = %e, "could not store a sync state");
                    }
                }
                Action::Denied { conn, doc } => {
                    self.metrics.access_denied.inc();
                    tracing::warn!(conn, doc = %doc, "document access denied");
                    // The first denial of each document per device in full, repeats
                    // aggregated: a device cannot write a record per frame.
                    let rec = self.audit_record_for(conn, "denied", Some(&doc), None);
                    let source = rec.device.clone().unwrap_or_else(|| format!("conn {conn}"));
                    self.audit_noisy(&source, &format!("denied {doc}"), rec);
                }
                Action::Accessed { conn, doc, wrote } => {
                    let first = self
                        .conns()
                        .info
                        .get_mut(&conn)
                        .is_some_and(|i| i.audited.insert((doc, wrote)));
                    if first {
                        let action = if wrote { "write" } else { "read" };
                        self.audit_for(conn, action, Some(&doc.to_string()), None);
                    }
                }
                Action::Refused {
                    conn,
                    doc,
                    change,
                    rule,
                    detail,
                    bytes,
                } => {
                    self.metrics.changes_refused.inc();
                    let (device, facility) = self
                        .conns()
                        .info
                        .get(&conn)
                        .map(|i| (Some(i.device.name.clone()), i.device.facility.clone()))
                        .unwrap_or_default();
                    tracing::warn!(conn, doc = %doc, %rule, "change refused and quarantined");
                    let id = self
                        .quarantine
                        .add(crate::sync::quarantine::Refused {
                            device,
                            facility,
                            document: doc.to_string(),
                            change: change.clone(),
                            rule: rule.to_string(),
                            detail: detail.clone(),
                            bytes: &bytes,
                        })
                        .map_err(|e| tracing::error!(error = %e, "could not quarantine"))
                        .ok();
                    let mut text = format!("rule {rule}: {detail}");
                    if let Some(h) = change {
                        text = format!("change {h} {text}");
                    }
                    if let Some(id) = id {
                        text.push_str(&format!(" (quarantine {id})"));
                    }
                    self.audit_for(conn, "refused", Some(&doc.to_string()), Some(text));
                }
                Action::Loaded(_) => {
                    self.metrics.documents_loaded.inc();
                }
            }
        }
        wrote
    }

    /// What the development shard wrote, the other shards forget: a copy they keep idle would
    /// be stale (they reload it from the store when next needed). Facility shards write only
    /// their own documents, which the development shard never keeps idle.
    fn forget_elsewhere(&self, shard: &Shard, docs: &[DocumentId]) {
        if !shard.is_dev() || docs.is_empty() {
            return;
        }
        for other in self.shards.all() {
            if !other.is_dev() {
                let mut core = other.lock();
                for d in docs {
                    core.hub.forget(*d);
                }
            }
        }
    }

    /// A flush covering `seq` completed: the hub sends what it held back. Returns whether that
    /// persisted anything, and the documents persisted since the last release (for alerting and
    /// late-data re-evaluation).
    fn release(&self, core: &mut ShardCore, seq: u64) -> (bool, Vec<DocumentId>) {
        let actions = core.hub.flushed(seq);
        let wrote = self.execute(core, actions);
        (wrote, std::mem::take(&mut core.persisted))
    }

    /// Make a shard's writes durable, then release what its hub held back. The flush is
    /// requested after the shard's last write (its `seq`), so it covers it, whatever other
    /// shards wrote meanwhile. (For writes made outside the shard's drainer: merges.)
    async fn flush_and_release(&self, shard: &Shard) {
        let own = shard.lock().hub.seq();
        match self.flusher.flush().await {
            Ok(_) => {
                // Releasing only sends (the hub's pump never persists), so no further flush.
                let (_, persisted) = self.release(&mut shard.lock(), own);
                self.forget_elsewhere(shard, &persisted);
                self.alerts_changed(&persisted);
                self.late_data(persisted).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; changes stay unacknowledged")
            }
        }
    }

    /// A frame from a connection: into its facility's inbox, waiting only while the inbox (or
    /// all inboxes together) hold their budget of frames. Returns without waiting for the
    /// frame to be processed: the connection goes on reading; answers go out through its sender.
    pub async fn receive(self: &Arc<Self>, conn: ConnId, frame: axum::body::Bytes) {
        let Some(home) = self.conns().info.get(&conn).map(|i| i.home.clone()) else {
            return;
        };
        // Frames are at most `max_frame`; a larger one still takes no more than a whole budget.
        let kib = u32::try_from(frame.len().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        let Ok(all) = self
            .inbox_budget
            .clone()
            .acquire_many_owned(kib.min(crate::sync::shards::ALL_INBOXES_KIB))
            .await
        else {
            return;
        };
        let Ok(own) = home
            .budget()
            .acquire_many_owned(kib.min(crate::sync::shards::INBOX_KIB))
            .await
        else {
            return;
        };
        let _ = home
            .inbox()
            .send(ShardMsg::Frame {
                conn,
                frame,
                budget: (all, own),
            })
            .await;
    }

    /// Feed a batch of a shard's inbox to its hub (on the blocking pool). Returns the hub's
    /// last sequence number when something was persisted: a flush is due before the documents
    /// it wrote are released.
    fn drain(self: &Arc<Self>, shard: &Arc<Shard>, batch: Vec<ShardMsg>) -> Option<u64> {
        let mut core = shard.lock();
        let mut wrote = false;
        let mut released = Vec::new();
        tracing::trace!(messages = batch.len(), "drain");
        for msg in batch {
            match msg {
                ShardMsg::Connect {
                    conn,
                    access,
                    device,
                } => core.hub.connect_device(conn, access, Some(device)),
                ShardMsg::Frame {
                    conn,
                    frame,
                    budget,
                } => {
                    wrote |= self.process_frame(shard, &mut core, conn, &frame);
                    // Its room in the inboxes is free again.
                    drop(budget);
                }
                ShardMsg::Routed { conn, msg } => {
                    wrote |= self.process_message(shard, &mut core, conn, msg);
                }
                ShardMsg::Disconnect { conn } => {
                    let actions = core.hub.disconnect(conn);
                    wrote |= self.execute(&mut core, actions);
                }
                ShardMsg::Absorb(doc) => {
                    let mut loader = &*self.store;
                    match core.hub.absorb(doc, &mut loader) {
                        Ok(actions) => wrote |= self.execute(&mut core, actions),
                        Err(e) => {
                            tracing::warn!(doc = %doc, error = %e, "could not read another server's change")
                        }
                    }
                }
                ShardMsg::Flushed(seq) => {
                    tracing::trace!(seq, "flush completed");
                    let (w, mut persisted) = self.release(&mut core, seq);
                    wrote |= w;
                    released.append(&mut persisted);
                }
            }
        }
        let seq = core.hub.seq();
        drop(core);
        if !released.is_empty() {
            self.forget_elsewhere(shard, &released);
            self.alerts_changed(&released);
            let shared = self.clone();
            tokio::spawn(async move { shared.late_data(released).await });
        }
        wrote.then_some(seq)
    }

    /// One frame in its connection's home shard: a device's goes to the hub as it is; a
    /// development-token connection's is decoded and, when its document belongs to another
    /// facility, routed to that facility's inbox (processed there in order).
    fn process_frame(
        self: &Arc<Self>,
        shard: &Arc<Shard>,
        core: &mut ShardCore,
        conn: ConnId,
        frame: &[u8],
    ) -> bool {
        let dev = self
            .conns()
            .info
            .get(&conn)
            .is_some_and(|i| i.device.facility.is_none());
        let mut loader = &*self.store;
        if !dev {
            let actions = core.hub.receive(conn, frame, &mut loader);
            return self.execute(core, actions);
        }
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            // The hub answers a bad frame with its error.
            Err(_) => {
                let actions = core.hub.receive(conn, frame, &mut loader);
                return self.execute(core, actions);
            }
        };
        let doc = match &msg {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::Ephemeral { document_id, .. } => document_id.parse::<DocumentId>().ok(),
            _ => None,
        };
        if let Message::Join { .. } = &msg
            && let Some(i) = self.conns().info.get_mut(&conn)
        {
            i.join = Some(msg.clone());
        }
        match doc.map(|d| self.shard_of_doc(&d)) {
            Some(target) if !Arc::ptr_eq(&target, shard) => {
                // Never wait here (this thread holds this shard's hub): a full inbox is waited
                // on by a task, which keeps this connection's messages for that shard in order
                // only as long as the inbox has room; a development token is not for production.
                match target.inbox().try_send(ShardMsg::Routed { conn, msg }) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(m)) => {
                        tokio::spawn(async move {
                            let _ = target.inbox().send(m).await;
                        });
                    }
                }
                false
            }
            _ => self.process_message(shard, core, conn, msg),
        }
    }

    /// A decoded message in this shard (registering the connection here first when it is a
    /// development-token connection seen here for the first time).
    fn process_message(
        &self,
        shard: &Arc<Shard>,
        core: &mut ShardCore,
        conn: ConnId,
        msg: Message,
    ) -> bool {
        let wrote = self.enter(conn, shard, core);
        let mut loader = &*self.store;
        let actions = core.hub.receive_message(conn, msg, &mut loader);
        self.execute(core, actions) || wrote
    }

    /// Register a connection in a further shard, replaying its `join` (the reply is dropped:
    /// the connection already has the server's `peer`). Nothing when it is registered here
    /// already, or gone: the check and the registration happen under the connection table's
    /// lock, so a connection that left is never registered again.
    fn enter(&self, conn: ConnId, shard: &Arc<Shard>, core: &mut ShardCore) -> bool {
        let (join, access, device) = {
            let mut conns = self.conns();
            let Some(i) = conns.info.get_mut(&conn) else {
                return false;
            };
            if i.shards.iter().any(|s| Arc::ptr_eq(s, shard)) {
                return false;
            }
            i.shards.push(shard.clone());
            (i.join.clone(), i.access.clone(), i.device.name.clone())
        };
        core.hub.connect_device(conn, access, Some(device));
        let Some(join) = join else {
            return false;
        };
        let mut loader = &*self.store;
        let actions = core.hub.receive_message(conn, join, &mut loader);
        let kept: Vec<Action> = actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Send(c, _) if *c == conn))
            .collect();
        self.execute(core, kept)
    }

    pub async fn protocol_error(&self, conn: ConnId, reason: &str) {
        tracing::warn!(conn, %reason, "protocol error");
        self.audit_for(conn, "protocol-error", None, Some(reason.to_string()));
        let target_id = self.conns().info.get(&conn).and_then(|i| match &i.join {
            Some(Message::Join { sender_id, .. }) => Some(sender_id.clone()),
            _ => None,
        });
        if let Some(tx) = self.sender(conn) {
            let frame = Message::Error {
                sender_id: Some(self.shards.peer_id().to_string()),
                target_id,
                message: reason.to_string(),
            }
            .encode();
            let _ = tx.send(Outbound::Frame(frame));
            let _ = tx.send(Outbound::Close(reason.to_string()));
        }
        self.leave_shards(conn, false).await;
    }

    pub async fn unregister(&self, conn: ConnId) {
        {
            let mut conns = self.conns();
            conns.senders.remove(&conn);
            if let Some(device) = conns.info.get(&conn).map(|i| i.device.name.clone())
                && let Some(n) = conns.device_conns.get_mut(&device)
            {
                *n = n.saturating_sub(1);
            }
        }
        self.leave_shards(conn, true).await;
    }

    /// Disconnect a connection from every shard it is in (its sync states are saved), through
    /// each shard's inbox, after whatever it sent before. With `forget`, its entry in the
    /// connection table goes in the same step, so no shard can register it again afterwards.
    async fn leave_shards(&self, conn: ConnId, forget: bool) {
        let shards = {
            let mut conns = self.conns();
            if forget {
                conns.info.remove(&conn).map(|i| i.shards)
            } else {
                conns.info.get(&conn).map(|i| i.shards.clone())
            }
        };
        for shard in shards.unwrap_or_default() {
            let _ = shard.inbox().send(ShardMsg::Disconnect { conn }).await;
        }
    }

    /// Merge whole documents of a facility (an import, the server's staged writes) and fan them
    /// out; returns once they are durable.
    pub async fn merge(
        &self,
        facility: &str,
        docs: Vec<(DocumentId, Vec<u8>)>,
    ) -> Result<(), String> {
        let shard = self.shard_for(Some(facility));
        let mut failure = None;
        {
            let mut core = shard.lock();
            for (id, bytes) in &docs {
                let mut loader = &*self.store;
                match core.hub.merge(*id, bytes, &mut loader) {
                    Ok(actions) => {
                        self.execute(&mut core, actions);
                    }
                    Err(e) => failure = Some(format!("document {id}: {e}")),
                }
            }
        }
        self.flush_and_release(&shard).await;
        failure.map_or(Ok(()), Err)
    }
}

/// A shard's drainer: takes what waits in its inbox, up to a burst, and feeds it to the hub on
/// the blocking pool (at most `frame_workers` shards at once); when the burst persisted
/// something, asks for a flush whose completion comes back through the inbox. Ends when the
/// server is gone.
pub(crate) async fn drive(me: Weak<Shared>, shard: Arc<Shard>, mut rx: mpsc::Receiver<ShardMsg>) {
    let mut batch = Vec::with_capacity(crate::sync::shards::BURST);
    loop {
        if rx.recv_many(&mut batch, crate::sync::shards::BURST).await == 0 {
            return;
        }
        let Some(shared) = me.upgrade() else {
            return;
        };
        let started = std::time::Instant::now();
        let wrote = {
            let Ok(_permit) = shared.frame_workers.acquire().await else {
                return;
            };
            let taken = std::mem::take(&mut batch);
            let (s, sh) = (shared.clone(), shard.clone());
            tokio::task::spawn_blocking(move || s.drain(&sh, taken))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "shard drain failed");
                    None
                })
        };
        if wrote.is_none() {
            shared
                .metrics
                .sync_burst_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if let Some(seq) = wrote {
            let shard = shard.clone();
            tokio::spawn(async move {
                match shared.flusher.flush().await {
                    Ok(_) => {
                        // Applied and durable: what a device waits for before its answer.
                        shared
                            .metrics
                            .sync_burst_seconds
                            .observe(started.elapsed().as_secs_f64());
                        let _ = shard.inbox().send(ShardMsg::Flushed(seq)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store flush failed; changes stay unacknowledged")
                    }
                }
            });
        }
    }
}
