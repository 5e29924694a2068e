//! The bus: the only module that touches `async-nats`.
//!
//! It turns JetStream into the few operations Carrier needs: make sure a context's stream and a
//! durable consumer exist, pull delivered messages in batches, acknowledge them, publish an
//! encoded event and wait for JetStream's PublishAck, and copy a poison message to the
//! dead-letter stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use bytes::Bytes;
use futures::stream::ReadyChunks;
use futures::StreamExt;

use carrier_messages::{DomainEvent, EncodedEvent};

use crate::nats_options::NatsOptions;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-published duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Header names Carrier adds to a dead-lettered copy.
pub mod dead_letter_header {
    /// The subject the message was delivered on.
    pub const ORIGINAL_SUBJECT: &str = "Carrier-Dlq-Original-Subject";
    /// The stream sequence it had there.
    pub const ORIGINAL_SEQUENCE: &str = "Carrier-Dlq-Original-Sequence";
    /// A stable code, e.g. `undecodable_body`.
    pub const REASON: &str = "Carrier-Dlq-Reason";
    /// The full error message.
    pub const ERROR: &str = "Carrier-Dlq-Error";
    /// How many times it had been delivered.
    pub const DELIVERY_COUNT: &str = "Carrier-Dlq-Delivery-Count";
    /// The consuming context.
    pub const CONTEXT: &str = "Carrier-Dlq-Context";
}

/// A failure talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A stream could not be created or read.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// Stream name.
        stream: String,
        /// What the server said.
        reason: String,
    },
    /// A durable consumer could not be created or read.
    #[error("consumer {durable} on {stream}: {reason}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Durable name.
        durable: String,
        /// What the server said.
        reason: String,
    },
    /// Pulling messages failed in a way that needs a new subscription.
    #[error("pulling from {durable}: {reason}")]
    Pull {
        /// Durable name.
        durable: String,
        /// What the client said.
        reason: String,
    },
    /// A publish was not acknowledged by JetStream.
    #[error("publish to {subject}: {reason}")]
    Publish {
        /// Subject.
        subject: String,
        /// What the client or server said.
        reason: String,
    },
    /// An acknowledgement could not be sent.
    #[error("ack: {0}")]
    Ack(String),
}

/// A connection to NATS with JetStream.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    /// How this connection was made, for [`Bus::another_connection`].
    origin: Arc<Origin>,
    /// Replicas of the streams and buckets this connection creates; `rescale` when they were
    /// asked for, so that existing ones are changed to it (never by a connection that did not
    /// ask: a `carrier publish` must not scale an R3 stream down to the default).
    replicas: usize,
    rescale: bool,
}

/// Why the first connection failed, in words that name what the server refused.
fn connect_failure(error: &async_nats::ConnectError, options: &NatsOptions) -> String {
    use async_nats::ConnectErrorKind as Kind;
    let presented = options.credentials();
    match error.kind() {
        Kind::AuthorizationViolation => {
            if presented == "no credentials" {
                "the server requires credentials and none were given (authorization violation; see --nats-user, --nats-creds, --nats-nkey)".to_string()
            } else {
                format!("the server refused {presented} (authorization violation)")
            }
        }
        Kind::Authentication => format!("authenticating with {presented} failed: {error}"),
        Kind::Tls => format!("TLS failed: {error}"),
        _ => error.to_string(),
    }
}

/// Logs what happens to an established connection (the client itself is kept quiet, see
/// `carrier_cli::init_logging`): `server` is the URL without credentials.
fn connection_event(server: &str, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!(%server, "connected to NATS"),
        Event::Disconnected => tracing::warn!(%server, "disconnected from NATS; reconnecting"),
        Event::Closed => tracing::debug!(%server, "NATS connection closed"),
        // Carrier's own clean close (`Bus::close`), not something an operator must look at.
        Event::Draining => tracing::debug!(%server, "NATS connection draining"),
        Event::ServerError(error) => tracing::warn!(%server, %error, "NATS server error"),
        other => tracing::warn!(%server, event = %other, "NATS connection"),
    }
}

/// `nats://a:4222,nats://b:4222` as the client's list of servers (it tries them in turn and
/// learns the rest of a cluster from the one it reaches).
fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Connect { url: u.to_string(), reason: format!("not a NATS server URL: {e}") })
        })
        .collect()
}

/// Where and as whom a [`Bus`] connected.
#[derive(Debug)]
struct Origin {
    options: NatsOptions,
    client_name: String,
    timeout: Duration,
}

impl Bus {
    /// Connects with `options` (a URL converts into them), failing fast (within `timeout`) when
    /// the server is not there or refuses the credentials: one error naming the server (without
    /// secrets) and what it refused, no retries. Once connected, the client reconnects for ever.
    pub async fn connect(
        options: impl Into<NatsOptions>,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Bus, BusError> {
        Self::try_connect(options.into(), client_name, timeout).await.map_err(|(error, _)| error)
    }

    /// Like [`connect`](Self::connect), but a server that is not there yet (refused, or no
    /// answer) is tried again for up to `wait`, with one log line saying so: a process started
    /// beside its server, or while the server restarts, comes up once the server does. Refused
    /// credentials, TLS and bad URLs fail at once: waiting would not change them.
    pub async fn connect_waiting(
        options: impl Into<NatsOptions>,
        client_name: &str,
        timeout: Duration,
        wait: Duration,
    ) -> Result<Bus, BusError> {
        let options = options.into();
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            match Self::try_connect(options.clone(), client_name, timeout).await {
                Ok(bus) => return Ok(bus),
                Err((error, true)) if started.elapsed() < wait => {
                    if !told {
                        tracing::warn!(%error, wait = ?wait, "NATS is not there yet; trying again");
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// One attempt; the error says whether trying again may help (the server not there yet).
    async fn try_connect(options: NatsOptions, client_name: &str, timeout: Duration) -> Result<Bus, (BusError, bool)> {
        let (url, connect) =
            options.client_options().await.map_err(|(url, reason)| (BusError::Connect { url, reason }, false))?;
        let shown = url.clone();
        let connect = connect
            .name(client_name)
            .connection_timeout(timeout)
            // After the first connection, keep reconnecting for ever: a restarted server must find
            // its consumers and relays again without help.
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((50 * attempts as u64).min(2_000)))
            .event_callback(move |event| {
                let server = shown.clone();
                async move { connection_event(&server, event) }
            })
            .connect(server_addrs(&url).map_err(|e| (e, false))?);
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| {
                (BusError::Connect { url: url.clone(), reason: format!("no answer within {timeout:?}") }, true)
            })?
            .map_err(|e| {
                use async_nats::ConnectErrorKind as Kind;
                let transient = matches!(e.kind(), Kind::Io | Kind::TimedOut);
                (BusError::Connect { url: url.clone(), reason: connect_failure(&e, &options) }, transient)
            })?;
        let js = jetstream::new(client.clone());
        let origin = Arc::new(Origin { options, client_name: client_name.to_string(), timeout });
        Ok(Bus { client, js, origin, replicas: 1, rescale: false })
    }

    /// The same connection, creating streams and buckets with `replicas` copies (1 on a single
    /// server, 3 on a cluster; JetStream allows at most 5). Existing streams with another count
    /// are changed to it when the bus first meets them.
    pub fn with_stream_replicas(mut self, replicas: usize) -> Bus {
        self.replicas = replicas.clamp(1, 5);
        self.rescale = true;
        self
    }

    /// A second connection to the same server, for bulk reads that must not queue in front of
    /// this connection's traffic: a rebuild's replay pulls batches of thousands of messages,
    /// and on one connection every command request and reply waits behind them. It closes when
    /// the returned `Bus` and its clones are dropped.
    pub async fn another_connection(&self, purpose: &str) -> Result<Bus, BusError> {
        let origin = &self.origin;
        let bus = Bus::connect(origin.options.clone(), &format!("{} ({purpose})", origin.client_name), origin.timeout)
            .await?;
        Ok(Bus { replicas: self.replicas, rescale: self.rescale, ..bus })
    }

    /// The key-value bucket `bucket` (one value per key, each expiring `ttl` after its last
    /// write), created if it does not exist.
    pub async fn lease_bucket(&self, bucket: &str, ttl: Duration) -> Result<LeaseBucket, BusError> {
        let failed = |reason: String| BusError::Stream { stream: format!("KV_{bucket}"), reason };
        let store = match self.js.get_key_value(bucket).await {
            Ok(store) => {
                // A bucket made by an older Carrier may let leases live another length of time
                // than this one fences at: the fence is only safe if the bucket's values live
                // `ttl`, so the bucket is made to (and its replicas changed when asked).
                let info = match self.js.get_stream(format!("KV_{bucket}")).await {
                    Ok(mut stream) => stream.info().await.ok().map(|i| i.config.clone()),
                    Err(_) => None,
                };
                if let Some(config) = info {
                    let replicas = if self.rescale { self.replicas } else { config.num_replicas.max(1) };
                    let lives = config.max_age;
                    let lives_otherwise = lives != ttl;
                    if lives_otherwise || config.num_replicas.max(1) != replicas {
                        let wanted = jetstream::stream::Config {
                            num_replicas: replicas,
                            max_age: ttl,
                            duplicate_window: ttl,
                            ..config
                        };
                        if let Err(e) = self.js.update_stream(&wanted).await {
                            if lives_otherwise {
                                return Err(failed(format!(
                                    "its leases live {lives:?}, not {ttl:?}, and it cannot be changed: {e}"
                                )));
                            }
                            tracing::warn!(%bucket, error = %e, "could not change the lease bucket's replicas");
                        }
                    }
                }
                store
            }
            Err(_) => {
                // The bucket's stream as `create_key_value` would make it, but with a duplicate
                // window no longer than the values live: the server refuses a longer one, and
                // the client's default is two minutes.
                let config = jetstream::stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("carrier: which instance runs each context (leases)".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age: ttl,
                    duplicate_window: ttl,
                    storage: jetstream::stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    num_replicas: self.replicas,
                    ..Default::default()
                };
                let created = self.js.get_or_create_stream(config).await.err();
                self.js.get_key_value(bucket).await.map_err(|e| match created {
                    Some(c) => failed(format!("cannot create it ({c}) nor read it ({e})")),
                    None => failed(e.to_string()),
                })?
            }
        };
        Ok(LeaseBucket { store })
    }

    /// The bucket `bucket` if it exists (never creating it: for readers).
    pub async fn existing_lease_bucket(&self, bucket: &str) -> Option<LeaseBucket> {
        self.js.get_key_value(bucket).await.ok().map(|store| LeaseBucket { store })
    }

    /// The server's version, e.g. `2.9.10`.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// Creates the context's event stream if it does not exist (idempotent).
    pub async fn ensure_event_stream<E: DomainEvent>(&self) -> Result<(), BusError> {
        self.ensure_stream(E::STREAM, E::STREAM_SUBJECTS).await
    }

    /// Creates the consuming context's dead-letter stream if it does not exist (idempotent).
    pub async fn ensure_dead_letter_stream(&self, context: &str) -> Result<(), BusError> {
        self.ensure_stream(&dead_letter_stream(context), &format!("{}.>", dead_letter_subject_prefix(context))).await
    }

    /// Creates the stream `name` capturing `subjects` if it does not exist (idempotent, and
    /// safe when several processes start at once).
    pub async fn ensure_stream(&self, name: &str, subjects: &str) -> Result<(), BusError> {
        let config = jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            ..Default::default()
        };
        match self.js.get_or_create_stream(config).await {
            Ok(stream) => {
                let existing = stream.cached_info().config.clone();
                if self.rescale && existing.num_replicas.max(1) != self.replicas {
                    // Made earlier with another count: JetStream scales a stream in place.
                    let wanted = jetstream::stream::Config { num_replicas: self.replicas, ..existing.clone() };
                    match self.js.update_stream(&wanted).await {
                        Ok(_) => tracing::info!(
                            stream = name,
                            from = existing.num_replicas,
                            to = self.replicas,
                            "stream replicas changed"
                        ),
                        Err(e) => {
                            return Err(BusError::Stream {
                                stream: name.to_string(),
                                reason: format!(
                                    "has {} replicas, {} configured, and the server refused the change: {e}",
                                    existing.num_replicas, self.replicas
                                ),
                            })
                        }
                    }
                }
                Ok(())
            }
            // Two processes starting at once both find no stream and both create it; the loser is
            // told the name or subjects are taken. The stream it wanted is there now.
            Err(create_error) => match self.js.get_stream(name).await {
                Ok(_) => Ok(()),
                Err(_) => {
                    let mut reason = create_error.to_string();
                    if self.replicas > 1 && reason.contains("non-clustered") {
                        reason.push_str(&format!(
                            "; {} stream replicas need a JetStream cluster (use 1 on a single server)",
                            self.replicas
                        ));
                    }
                    Err(BusError::Stream { stream: name.to_string(), reason })
                }
            },
        }
    }

    /// Binds to the durable pull consumer, or (re)creates it to start right after `checkpoint`,
    /// the last stream sequence the caller committed; then starts pulling.
    ///
    /// Under `AckPolicy::All` one ack covers every earlier delivery, including deliveries a
    /// crashed incarnation received and never applied. So the caller's checkpoint, committed with
    /// the effects, is the authority on position: when the server shows deliveries still in
    /// flight, or an ack floor past the checkpoint (the cache was reset), the consumer is
    /// recreated to deliver from `checkpoint + 1`. Everything after the checkpoint is then
    /// delivered again, in order; the inbox drops what was applied already.
    pub async fn durable(&self, spec: &DurableSpec, checkpoint: u64) -> Result<DurableConsumer, BusError> {
        let consumer_error =
            |reason: String| BusError::Consumer { stream: spec.stream.clone(), durable: spec.durable.clone(), reason };
        let stream = self.js.get_stream(&spec.stream).await.map_err(|e| consumer_error(e.to_string()))?;
        // Below the first retained sequence nothing can be delivered any more; and a checkpoint
        // past the stream's last sequence means the stream started over (recreated, or a server
        // lost what it had stored): waiting at checkpoint + 1 would skip the new stream's start.
        let state = &stream.cached_info().state;
        let (first, last) = (state.first_sequence, state.last_sequence);
        let trimmed = (first > checkpoint + 1 || checkpoint > last).then_some((checkpoint + 1, first));
        let reusable = match stream.consumer_info(&spec.durable).await {
            Ok(info) => {
                // The ack floor trails the checkpoint only when an ack was lost after a commit,
                // and passes it only after an operator's seek backwards; a seek forwards leaves it
                // behind. Reused, such a durable would deliver from the wrong place.
                let clean = info.num_ack_pending == 0 && info.ack_floor.stream_sequence == checkpoint;
                if !clean {
                    tracing::info!(
                        durable = %spec.durable,
                        ack_pending = info.num_ack_pending,
                        ack_floor = info.ack_floor.stream_sequence,
                        checkpoint,
                        "recreating the durable consumer from the committed checkpoint"
                    );
                    stream.delete_consumer(&spec.durable).await.map_err(|e| consumer_error(e.to_string()))?;
                }
                clean
            }
            Err(_) => false,
        };
        let config = pull::Config {
            durable_name: Some(spec.durable.clone()),
            description: Some(spec.description.clone()),
            filter_subject: spec.filter_subject.clone(),
            deliver_policy: if checkpoint == 0 {
                jetstream::consumer::DeliverPolicy::All
            } else {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: checkpoint + 1 }
            },
            // One ack per committed batch covers every message before it: the batch is applied
            // in one transaction, so there is nothing finer to acknowledge.
            ack_policy: AckPolicy::All,
            ack_wait: spec.ack_wait,
            max_ack_pending: spec.max_ack_pending,
            inactive_threshold: spec.inactive_threshold.unwrap_or_default(),
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer = if reusable {
            stream.get_consumer(&spec.durable).await.map_err(|e| consumer_error(e.to_string()))?
        } else {
            stream.create_consumer(config).await.map_err(|e| consumer_error(e.to_string()))?
        };
        let messages = consumer
            .stream()
            // Several batches' worth per pull request, so messages keep arriving while a batch
            // is being committed and the next batch is already there when the commit returns.
            .max_messages_per_batch((spec.batch_max.max(1) * 4).clamp(256, 8192))
            .heartbeat(Duration::from_secs(5))
            // A pull request outlives a hung client by at most this long.
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .map_err(|e| consumer_error(e.to_string()))?
            .ready_chunks(spec.batch_max.max(1));
        Ok(DurableConsumer {
            durable: spec.durable.clone(),
            consumer,
            messages,
            overflow: std::collections::VecDeque::new(),
            batch_max: spec.batch_max.max(1),
            linger: spec.linger,
            trimmed,
        })
    }

    /// Reads `stream` from sequence `from` on with an ephemeral consumer that acknowledges nothing
    /// and leaves nothing behind (the server drops it after 10 s without pulls): for rebuilding
    /// caches while the durable consumers go on as they were.
    pub async fn replay(
        &self,
        stream: &str,
        filter_subject: &str,
        from: u64,
        batch_max: usize,
    ) -> Result<DurableConsumer, BusError> {
        let label = format!("replay of {stream}");
        let consumer_error =
            |reason: String| BusError::Consumer { stream: stream.to_string(), durable: label.clone(), reason };
        let handle = self.js.get_stream(stream).await.map_err(|e| consumer_error(e.to_string()))?;
        let config = pull::Config {
            description: Some("carrier rebuild: replays the stream into a fresh cache".into()),
            filter_subject: filter_subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer =
            handle.create_consumer(config).await.map_err(|e| consumer_error(e.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch((batch_max.max(1) * 4).clamp(256, 8192))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .map_err(|e| consumer_error(e.to_string()))?
            .ready_chunks(batch_max.max(1));
        Ok(DurableConsumer {
            durable: label.clone(),
            consumer,
            messages,
            overflow: std::collections::VecDeque::new(),
            batch_max: batch_max.max(1),
            linger: Duration::from_millis(2),
            trimmed: None,
        })
    }

    /// A stream's first retained and last sequences (`first` is `last + 1` when it is empty).
    pub async fn stream_bounds(&self, stream: &str) -> Result<(u64, u64), BusError> {
        let stream_error = |reason: String| BusError::Stream { stream: stream.to_string(), reason };
        let mut handle = self.js.get_stream(stream).await.map_err(|e| stream_error(e.to_string()))?;
        let state = &handle.info().await.map_err(|e| stream_error(e.to_string()))?.state;
        Ok((state.first_sequence, state.last_sequence))
    }

    /// The stream sequence of the first message on `filter_subject` stored at or after `at`, or
    /// `None` when there is none yet: JetStream's own start-time lookup, through an ephemeral
    /// consumer that reads one message and is deleted.
    pub async fn first_sequence_at(
        &self,
        stream: &str,
        filter_subject: &str,
        at: std::time::SystemTime,
    ) -> Result<Option<u64>, BusError> {
        let label = format!("time lookup in {stream}");
        let consumer_error =
            |reason: String| BusError::Consumer { stream: stream.to_string(), durable: label.clone(), reason };
        let handle = self.js.get_stream(stream).await.map_err(|e| consumer_error(e.to_string()))?;
        let config = pull::Config {
            description: Some("carrier consumer seek: finds the first event at a time".into()),
            filter_subject: filter_subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time: at.into() },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer =
            handle.create_consumer(config).await.map_err(|e| consumer_error(e.to_string()))?;
        // Pending counts what the consumer has left to deliver: none means nothing that late.
        let found = match consumer.cached_info().num_pending {
            0 => None,
            _ => {
                let mut batch = consumer
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .map_err(|e| consumer_error(e.to_string()))?;
                match batch.next().await {
                    Some(Ok(message)) => {
                        Some(message.info().map_err(|e| consumer_error(e.to_string()))?.stream_sequence)
                    }
                    Some(Err(e)) => return Err(consumer_error(e.to_string())),
                    None => None,
                }
            }
        };
        let name = consumer.cached_info().name.clone();
        let _ = handle.delete_consumer(&name).await;
        Ok(found)
    }

    /// The last sequence stored in a stream (0 when empty).
    pub async fn last_sequence(&self, stream: &str) -> Result<u64, BusError> {
        let stream_error = |reason: String| BusError::Stream { stream: stream.to_string(), reason };
        let mut handle = self.js.get_stream(stream).await.map_err(|e| stream_error(e.to_string()))?;
        Ok(handle.info().await.map_err(|e| stream_error(e.to_string()))?.state.last_sequence)
    }

    /// Publishes one event and waits for JetStream to store it.
    pub async fn publish(&self, event: &EncodedEvent) -> Result<PublishReceipt, BusError> {
        let ack = self.send(event).await?;
        await_ack(&event.subject, ack).await
    }

    /// Publishes events in order, pipelined: every publish is sent before the first ack is
    /// awaited. Returns one result per event, in order.
    pub async fn publish_all(&self, events: &[EncodedEvent]) -> Vec<Result<PublishReceipt, BusError>> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            pending.push(self.send(event).await);
        }
        let mut results = Vec::with_capacity(events.len());
        for (event, sent) in events.iter().zip(pending) {
            results.push(match sent {
                Ok(ack) => await_ack(&event.subject, ack).await,
                Err(e) => Err(e),
            });
        }
        results
    }

    async fn send(&self, event: &EncodedEvent) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &event.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        self.js
            .publish_with_headers(event.subject.clone(), headers, Bytes::from(event.body.clone()))
            .await
            .map_err(|e| BusError::Publish { subject: event.subject.clone(), reason: e.to_string() })
    }

    /// Publishes many events with up to `window` PublishAcks outstanding, for loading a stream
    /// fast (benchmarks, soak runs). Fails on the first publish JetStream refuses.
    pub async fn publish_many(&self, events: &[EncodedEvent], window: usize) -> Result<u64, BusError> {
        let mut in_flight = std::collections::VecDeque::with_capacity(window);
        let mut last = 0;
        for event in events {
            if in_flight.len() >= window.max(1) {
                if let Some((subject, ack)) = in_flight.pop_front() {
                    last = await_ack(subject, ack).await?.stream_seq;
                }
            }
            in_flight.push_back((event.subject.as_str(), self.send(event).await?));
        }
        while let Some((subject, ack)) = in_flight.pop_front() {
            last = await_ack(subject, ack).await?.stream_seq;
        }
        Ok(last)
    }

    /// The benchmark's baseline: a plain pull consumer on `stream` that acks every message
    /// explicitly and does nothing else. Returns how long `count` messages took, from the first
    /// pull to the last ack leaving the client.
    pub async fn raw_consume_and_ack(&self, stream: &str, durable: &str, count: u64) -> Result<Duration, BusError> {
        let error =
            |reason: String| BusError::Consumer { stream: stream.to_string(), durable: durable.to_string(), reason };
        let stream_handle = self.js.get_stream(stream).await.map_err(|e| error(e.to_string()))?;
        let config = pull::Config {
            durable_name: Some(durable.to_string()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        let consumer = stream_handle.get_or_create_consumer(durable, config).await.map_err(|e| error(e.to_string()))?;
        let started = std::time::Instant::now();
        let mut messages =
            consumer.stream().max_messages_per_batch(1024).messages().await.map_err(|e| error(e.to_string()))?;
        let mut seen = 0;
        while seen < count {
            match messages.next().await {
                Some(Ok(message)) => {
                    message.ack().await.map_err(|e| BusError::Ack(e.to_string()))?;
                    seen += 1;
                }
                Some(Err(e)) => tracing::debug!(error = %e, "baseline pull error"),
                None => return Err(error("message stream ended".into())),
            }
        }
        self.flush().await?;
        Ok(started.elapsed())
    }

    /// The benchmark's cheapest read: an ordered consumer (no acks at all; the client checks the
    /// sequences and recreates it on a gap) reading `count` messages of `stream` from its start
    /// and doing nothing with them. Returns how long they took from the first pull.
    pub async fn raw_ordered_read(&self, stream: &str, count: u64) -> Result<Duration, BusError> {
        let error = |reason: String| BusError::Consumer {
            stream: stream.to_string(),
            durable: "ordered baseline".into(),
            reason,
        };
        let handle = self.js.get_stream(stream).await.map_err(|e| error(e.to_string()))?;
        let consumer = handle
            .create_consumer(pull::OrderedConfig { ..Default::default() })
            .await
            .map_err(|e| error(e.to_string()))?;
        let started = std::time::Instant::now();
        let mut messages = consumer.messages().await.map_err(|e| error(e.to_string()))?;
        let mut seen = 0;
        while seen < count {
            match messages.next().await {
                Some(Ok(_)) => seen += 1,
                Some(Err(e)) => tracing::debug!(error = %e, "ordered baseline error"),
                None => return Err(error("message stream ended".into())),
            }
        }
        Ok(started.elapsed())
    }

    /// The benchmark's plain loop, the most a consumer that commits per batch can do on this
    /// server and client: a durable under `AckPolicy::All` pulled as Carrier's consumers pull,
    /// `work` on each batch of at most `batch_max` (the caller decodes and commits), then one ack
    /// of the batch's last message. Returns how long `count` messages took.
    pub async fn raw_batch_loop(
        &self,
        stream: &str,
        durable: &str,
        count: u64,
        batch_max: usize,
        mut work: impl FnMut(&[Delivery]) -> Result<(), String>,
    ) -> Result<Duration, BusError> {
        let error =
            |reason: String| BusError::Consumer { stream: stream.to_string(), durable: durable.to_string(), reason };
        let handle = self.js.get_stream(stream).await.map_err(|e| error(e.to_string()))?;
        let config = pull::Config {
            durable_name: Some(durable.to_string()),
            ack_policy: AckPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        let consumer = handle.create_consumer(config).await.map_err(|e| error(e.to_string()))?;
        let started = std::time::Instant::now();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch((batch_max.max(1) * 4).clamp(256, 8192))
            .messages()
            .await
            .map_err(|e| error(e.to_string()))?
            .ready_chunks(batch_max.max(1));
        let mut seen = 0;
        while seen < count {
            let Some(chunk) = messages.next().await else { return Err(error("message stream ended".into())) };
            let mut name = None;
            let batch: Vec<Delivery> = chunk
                .into_iter()
                .filter_map(|m| m.ok())
                .map(|m| Delivery::from_message(m, &mut name))
                .collect::<Result<_, _>>()?;
            work(&batch).map_err(error)?;
            if let Some(last) = batch.last() {
                last.ack().await?;
            }
            seen += batch.len() as u64;
        }
        self.flush().await?;
        Ok(started.elapsed())
    }

    /// Publishes `events` at `per_second`, paced by the clock (not by acks), with up to `window`
    /// PublishAcks outstanding. Returns when each was sent, in order, once all are acknowledged.
    /// For latency measurements: the offered load stays fixed however fast the consumer is.
    pub async fn publish_paced(
        &self,
        events: &[EncodedEvent],
        per_second: u32,
        window: usize,
    ) -> Result<Vec<std::time::Instant>, BusError> {
        let mut sent_at = Vec::with_capacity(events.len());
        let mut in_flight = std::collections::VecDeque::with_capacity(window);
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next = 0usize;
        while next < events.len() {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * f64::from(per_second)) as usize + 1).min(events.len());
            while next < due {
                if in_flight.len() >= window.max(1) {
                    if let Some((subject, ack)) = in_flight.pop_front() {
                        await_ack(subject, ack).await?;
                    }
                }
                sent_at.push(std::time::Instant::now());
                in_flight.push_back((events[next].subject.as_str(), self.send(&events[next]).await?));
                next += 1;
            }
            // Flush now: the client would otherwise hold small writes back a little.
            self.flush().await?;
        }
        while let Some((subject, ack)) = in_flight.pop_front() {
            await_ack(subject, ack).await?;
        }
        Ok(sent_at)
    }

    /// Deletes every message of a stream, keeping the stream (benchmarks reload it each round).
    pub async fn purge_stream(&self, stream: &str) -> Result<(), BusError> {
        let stream_error = |reason: String| BusError::Stream { stream: stream.to_string(), reason };
        let handle = self.js.get_stream(stream).await.map_err(|e| stream_error(e.to_string()))?;
        handle.purge().await.map_err(|e| stream_error(e.to_string()))?;
        Ok(())
    }

    /// Deletes a durable consumer if it exists (benchmarks start each round from scratch).
    pub async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<(), BusError> {
        let error =
            |reason: String| BusError::Consumer { stream: stream.to_string(), durable: durable.to_string(), reason };
        let handle = self.js.get_stream(stream).await.map_err(|e| error(e.to_string()))?;
        match handle.delete_consumer(durable).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// Copies a message that can never be applied to the context's dead-letter stream, with the
    /// reason, and waits for JetStream to store it. The original headers and body are kept.
    pub async fn dead_letter(
        &self,
        context: &str,
        delivery: &Delivery,
        reason: &str,
        error: &str,
    ) -> Result<(), BusError> {
        let mut headers = delivery.headers.clone().unwrap_or_default();
        // The copy's Nats-Msg-Id is replaced below; a producer that gave the event id only there
        // must not lose it, or a replay could not be de-duplicated.
        // (Only the header framing has the id in a header; the structured one carries it in the body.)
        if delivery.header(carrier_messages::header::EVENT_TYPE).is_some()
            && delivery.header(carrier_messages::header::EVENT_ID).is_none()
        {
            if let Some(id) = delivery.header("Nats-Msg-Id") {
                headers.insert(carrier_messages::header::EVENT_ID, id);
            }
        }
        headers.insert(dead_letter_header::ORIGINAL_SUBJECT, delivery.subject.as_str());
        headers.insert(dead_letter_header::ORIGINAL_SEQUENCE, delivery.stream_seq.to_string().as_str());
        headers.insert(dead_letter_header::REASON, reason);
        headers.insert(dead_letter_header::ERROR, sanitize_header(error).as_str());
        headers.insert(dead_letter_header::DELIVERY_COUNT, delivery.delivered.to_string().as_str());
        headers.insert(dead_letter_header::CONTEXT, context);
        // The copy gets its own de-duplication id, so a re-delivered poison message is stored
        // once but two different poison messages sharing an event id are both kept.
        let dedup = format!("dlq:{context}:{}:{}", delivery.stream_name, delivery.stream_seq);
        headers.insert("Nats-Msg-Id", dedup.as_str());
        let subject = format!("{}.{}", dead_letter_subject_prefix(context), delivery.subject);
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, delivery.payload.clone())
            .await
            .map_err(|e| BusError::Publish { subject: subject.clone(), reason: e.to_string() })?;
        await_ack(&subject, ack).await.map(|_| ())
    }

    /// Copies an event that was never published (an outbox row of an instance that lost its
    /// context's lease) to the context's dead-letter stream with the reason, keeping its headers
    /// and body; its original sequence is 0.
    pub async fn dead_letter_unpublished(
        &self,
        context: &str,
        event: &carrier_messages::EncodedEvent,
        reason: &str,
        error: &str,
    ) -> Result<(), BusError> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &event.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers.insert(dead_letter_header::ORIGINAL_SUBJECT, event.subject.as_str());
        headers.insert(dead_letter_header::ORIGINAL_SEQUENCE, "0");
        headers.insert(dead_letter_header::REASON, reason);
        headers.insert(dead_letter_header::ERROR, sanitize_header(error).as_str());
        headers.insert(dead_letter_header::DELIVERY_COUNT, "0");
        headers.insert(dead_letter_header::CONTEXT, context);
        let dedup = format!("dlq:{context}:{reason}:{}", event.event_id.0);
        headers.insert("Nats-Msg-Id", dedup.as_str());
        let subject = format!("{}.{}", dead_letter_subject_prefix(context), event.subject);
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from(event.body.clone()))
            .await
            .map_err(|e| BusError::Publish { subject: subject.clone(), reason: e.to_string() })?;
        await_ack(&subject, ack).await.map(|_| ())
    }

    /// Reads up to `limit` dead letters of a context, oldest first, starting at stream sequence
    /// `from`.
    pub async fn dead_letters(&self, context: &str, from: u64, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let name = dead_letter_stream(context);
        let stream_error = |reason: String| BusError::Stream { stream: name.clone(), reason };
        let mut stream = self.js.get_stream(&name).await.map_err(|e| stream_error(e.to_string()))?;
        let state = stream.info().await.map_err(|e| stream_error(e.to_string()))?.state.clone();
        let mut letters = Vec::new();
        let mut seq = from.max(state.first_sequence);
        while seq <= state.last_sequence && letters.len() < limit && state.messages > 0 {
            // Deleted sequences (replayed or purged letters) leave gaps; skip them.
            if let Ok(message) = stream.get_raw_message(seq).await {
                letters.push(DeadLetter::from_stream_message(message));
            }
            seq += 1;
        }
        Ok(letters)
    }

    /// How many dead letters a context has, and the latest `limit` of them, newest first.
    pub async fn dead_letter_tail(&self, context: &str, limit: usize) -> Result<(u64, Vec<DeadLetter>), BusError> {
        let name = dead_letter_stream(context);
        let stream_error = |reason: String| BusError::Stream { stream: name.clone(), reason };
        let mut stream = self.js.get_stream(&name).await.map_err(|e| stream_error(e.to_string()))?;
        let state = stream.info().await.map_err(|e| stream_error(e.to_string()))?.state.clone();
        let mut letters = Vec::new();
        let mut seq = state.last_sequence;
        // Deleted sequences (replayed or purged letters) leave gaps; look a bounded way back.
        let mut budget = limit * 4 + 16;
        while state.messages > 0 && seq >= state.first_sequence.max(1) && letters.len() < limit && budget > 0 {
            if let Ok(message) = stream.get_raw_message(seq).await {
                letters.push(DeadLetter::from_stream_message(message));
            }
            seq -= 1;
            budget -= 1;
        }
        Ok((state.messages, letters))
    }

    /// The server's view of a durable consumer.
    pub async fn consumer_info(&self, stream: &str, durable: &str) -> Result<ConsumerInfo, BusError> {
        let stream_error = |reason: String| BusError::Stream { stream: stream.to_string(), reason };
        let stream_handle = self.js.get_stream(stream).await.map_err(|e| stream_error(e.to_string()))?;
        let info = stream_handle
            .consumer_info(durable)
            .await
            .map_err(|e| BusError::Pull { durable: durable.to_string(), reason: e.to_string() })?;
        let mut filter_subjects = info.config.filter_subjects.clone();
        if !info.config.filter_subject.is_empty() {
            filter_subjects.insert(0, info.config.filter_subject.clone());
        }
        Ok(ConsumerInfo {
            filter_subjects,
            delivered_stream_seq: info.delivered.stream_sequence,
            ack_floor_stream_seq: info.ack_floor.stream_sequence,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            waiting: info.num_waiting as u64,
        })
    }

    /// Whether the connection to the server is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// One dead letter by its sequence in the dead-letter stream.
    pub async fn read_dead_letter(&self, context: &str, seq: u64) -> Result<Option<DeadLetter>, BusError> {
        let name = dead_letter_stream(context);
        let stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| BusError::Stream { stream: name.clone(), reason: e.to_string() })?;
        Ok(stream.get_raw_message(seq).await.ok().map(DeadLetter::from_stream_message))
    }

    /// Publishes a dead letter again to its original subject with its original headers (the
    /// event id included, so consumers' inboxes still de-duplicate it), then deletes it from the
    /// dead-letter stream. `Nats-Msg-Id` is left off: within JetStream's duplicate window the
    /// original id would make the replay a silent no-op.
    pub async fn replay_dead_letter(&self, context: &str, seq: u64) -> Result<PublishReceipt, BusError> {
        let name = dead_letter_stream(context);
        let stream_error = |reason: String| BusError::Stream { stream: name.clone(), reason };
        let stream = self.js.get_stream(&name).await.map_err(|e| stream_error(e.to_string()))?;
        let message = stream.get_raw_message(seq).await.map_err(|e| stream_error(format!("dead letter {seq}: {e}")))?;
        let letter = DeadLetter::from_stream_message(message);
        let subject = letter
            .header(dead_letter_header::ORIGINAL_SUBJECT)
            .ok_or_else(|| {
                stream_error(format!("dead letter {seq} has no {} header", dead_letter_header::ORIGINAL_SUBJECT))
            })?
            .to_string();
        let headers: Vec<(String, String)> = letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("Carrier-Dlq-") && k != "Nats-Msg-Id")
            .cloned()
            .collect();
        let receipt = self.publish_raw(&subject, &headers, letter.body.clone()).await?;
        stream
            .delete_message(seq)
            .await
            .map_err(|e| stream_error(format!("replayed {seq} but could not delete it: {e}")))?;
        Ok(receipt)
    }

    /// Deletes one dead letter, or all of a context's when `seq` is `None`. Returns how many went.
    pub async fn purge_dead_letters(&self, context: &str, seq: Option<u64>) -> Result<u64, BusError> {
        let name = dead_letter_stream(context);
        let stream_error = |reason: String| BusError::Stream { stream: name.clone(), reason };
        let stream = self.js.get_stream(&name).await.map_err(|e| stream_error(e.to_string()))?;
        match seq {
            Some(seq) => {
                let deleted =
                    stream.delete_message(seq).await.map_err(|e| stream_error(format!("dead letter {seq}: {e}")))?;
                Ok(u64::from(deleted))
            }
            None => stream.purge().await.map(|r| r.purged).map_err(|e| stream_error(e.to_string())),
        }
    }

    /// Appends an event store's commit (one message, see
    /// [`Decoded::encode_commit`](carrier_messages::Decoded::encode_commit)) to its aggregate's
    /// subject, only if the last message on that subject is still `expected` (0: none yet):
    /// JetStream's `Nats-Expected-Last-Subject-Sequence`, checked by the server under the stream's
    /// lock, so of two writers that loaded the same version exactly one wins.
    pub async fn append(&self, commit: &EncodedEvent, expected: u64) -> Result<PublishReceipt, AppendError> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &commit.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(Bytes::from(commit.body.clone()))
            .expected_last_subject_sequence(expected);
        let failed = |reason: String| AppendError::Bus(BusError::Publish { subject: commit.subject.clone(), reason });
        let ack = self.js.send_publish(commit.subject.clone(), publish).await.map_err(|e| failed(e.to_string()))?;
        match ack.await {
            Ok(ack) => Ok(PublishReceipt { stream_seq: ack.sequence, duplicate: ack.duplicate }),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(AppendError::Conflict { subject: commit.subject.clone(), expected })
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// The stream sequence of the last message on `subject` (0 when there is none): where an
    /// aggregate's history ends.
    pub async fn last_on_subject(&self, stream: &str, subject: &str) -> Result<u64, BusError> {
        let stream_error = |reason: String| BusError::Stream { stream: stream.to_string(), reason };
        let handle = self.js.get_stream_no_info(stream).await.map_err(|e| stream_error(e.to_string()))?;
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(message.sequence),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(stream_error(format!("last message on {subject}: {e}"))),
        }
    }

    /// Reads the messages on `subject` from sequence `from` through `until` (or the stream's end,
    /// whichever comes first), in order, handing each to `visit`: an aggregate's history. One
    /// ephemeral consumer that acknowledges nothing, deleted when done.
    pub async fn read_subject(
        &self,
        stream: &str,
        subject: &str,
        from: u64,
        until: u64,
        mut visit: impl FnMut(StoredMessage),
    ) -> Result<(), BusError> {
        let label = format!("history of {subject}");
        let consumer_error =
            |reason: String| BusError::Consumer { stream: stream.to_string(), durable: label.clone(), reason };
        let handle = self.js.get_stream_no_info(stream).await.map_err(|e| consumer_error(e.to_string()))?;
        let config = pull::Config {
            description: Some("carrier event store: loads an aggregate".into()),
            filter_subject: subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer =
            handle.create_consumer(config).await.map_err(|e| consumer_error(e.to_string()))?;
        let mut pending = consumer.cached_info().num_pending;
        let result = async {
            let mut seen = 0u64;
            while pending > 0 {
                let want = pending.min(4096) as usize;
                let mut batch = consumer
                    .fetch()
                    .max_messages(want)
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await
                    .map_err(|e| consumer_error(e.to_string()))?;
                let mut got = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| consumer_error(e.to_string()))?;
                    let info = message.info().map_err(|e| consumer_error(e.to_string()))?;
                    let (seq, left) = (info.stream_sequence, info.pending);
                    got += 1;
                    if seq > until {
                        return Ok(());
                    }
                    visit(StoredMessage {
                        subject: message.subject.to_string(),
                        headers: message.headers.as_ref().map(header_pairs).unwrap_or_default(),
                        payload: message.payload.clone(),
                        stream_seq: seq,
                    });
                    seen += 1;
                    pending = left;
                    if seq >= until {
                        return Ok(());
                    }
                }
                if got == 0 {
                    return Err(consumer_error(format!("no messages came after {seen}; {pending} were pending")));
                }
            }
            Ok(())
        }
        .await;
        let name = consumer.cached_info().name.clone();
        let _ = handle.delete_consumer(&name).await;
        result
    }

    /// The message stored at `seq` in `stream`, if it is still there: (subject, headers, body).
    pub async fn message_at(&self, stream: &str, seq: u64) -> Result<Option<StoredMessage>, BusError> {
        let stream_error = |reason: String| BusError::Stream { stream: stream.to_string(), reason };
        let handle = self.js.get_stream_no_info(stream).await.map_err(|e| stream_error(e.to_string()))?;
        match handle.get_raw_message(seq).await {
            Ok(message) => Ok(Some(StoredMessage {
                subject: message.subject.to_string(),
                headers: header_pairs(&message.headers),
                payload: message.payload,
                stream_seq: message.sequence,
            })),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(stream_error(format!("message {seq}: {e}"))),
        }
    }

    /// The key-value bucket `bucket` for an event store's snapshots, made if missing: one value
    /// per key (`max_messages_per_subject` 1), shared by every instance.
    pub async fn snapshot_bucket(&self, bucket: &str) -> Result<SnapshotBucket, BusError> {
        let failed = |reason: String| BusError::Stream { stream: format!("KV_{bucket}"), reason };
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(SnapshotBucket { store });
        }
        // The bucket's stream as `create_key_value` would make it (the client's own call fails
        // to read 2.9's answer).
        let config = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("carrier: aggregate snapshots of an event store".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: self.replicas,
            ..Default::default()
        };
        let created = self.js.get_or_create_stream(config).await.err();
        self.js.get_key_value(bucket).await.map(|store| SnapshotBucket { store }).map_err(|e| match created {
            Some(c) => failed(format!("cannot create it ({c}) nor read it ({e})")),
            None => failed(e.to_string()),
        })
    }

    /// A plain (core NATS) publish with headers, for tools that speak for a producer.
    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<PublishReceipt, BusError> {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(name.as_str(), value.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), map, body)
            .await
            .map_err(|e| BusError::Publish { subject: subject.to_string(), reason: e.to_string() })?;
        await_ack(subject, ack).await
    }

    /// Listens for requests on `subject` in a queue group, so that several instances of a context
    /// share the load and each request is answered once.
    pub async fn serve(&self, subject: &str, queue_group: &str) -> Result<RequestStream, BusError> {
        let subscriber =
            self.client.queue_subscribe(subject.to_string(), queue_group.to_string()).await.map_err(|e| {
                BusError::Publish { subject: subject.to_string(), reason: format!("cannot subscribe: {e}") }
            })?;
        Ok(RequestStream { subscriber })
    }

    /// Answers a request (a request without a reply subject is dropped).
    pub async fn respond(&self, request: &IncomingRequest, content_type: &str, body: Vec<u8>) -> Result<(), BusError> {
        let Some(reply) = request.reply.clone() else { return Ok(()) };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", content_type);
        self.client
            .publish_with_headers(reply.clone(), headers, Bytes::from(body))
            .await
            .map_err(|e| BusError::Publish { subject: reply.to_string(), reason: e.to_string() })
    }

    /// Sends a request and waits up to `timeout` for the reply's body.
    pub async fn request(
        &self,
        subject: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(name.as_str(), value.as_str());
        }
        let request = self.client.request_with_headers(subject.to_string(), map, Bytes::from(body));
        let reply = tokio::time::timeout(timeout, request)
            .await
            .map_err(|_| BusError::Publish {
                subject: subject.to_string(),
                reason: format!("{NO_REPLY_WITHIN} {timeout:?}"),
            })?
            .map_err(|e| BusError::Publish { subject: subject.to_string(), reason: e.to_string() })?;
        Ok(reply.payload)
    }

    /// Messages stored in a stream, or `None` when it does not exist.
    pub async fn stream_message_count(&self, stream: &str) -> Result<Option<u64>, BusError> {
        match self.js.get_stream(stream).await {
            Ok(mut s) => {
                let info = s
                    .info()
                    .await
                    .map_err(|e| BusError::Stream { stream: stream.to_string(), reason: e.to_string() })?;
                Ok(Some(info.state.messages))
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(e) => Err(BusError::Stream { stream: stream.to_string(), reason: e.to_string() }),
        }
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(|e| BusError::Publish { subject: "(flush)".into(), reason: e.to_string() })
    }

    /// Closes the connection: the server drops this client's subscriptions and pull requests at
    /// once, as it does when a process dies.
    pub async fn close(&self) {
        let _ = self.client.drain().await;
    }

    /// Direct access for the raw-baseline benchmark and tests' plain-client checks.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

/// How a request's timeout is worded (see [`BusError::is_timeout`]).
const NO_REPLY_WITHIN: &str = "no reply within";
/// How the client words a request nobody is subscribed to.
const NO_RESPONDERS: &str = "no responders";

impl BusError {
    /// Whether a request got no reply in time: unlike "no responders", the request may have
    /// been received and acted on, so its outcome is unknown.
    pub fn is_timeout(&self) -> bool {
        matches!(self, BusError::Publish { reason, .. } if reason.starts_with(NO_REPLY_WITHIN))
    }

    /// Whether a request found nobody subscribed to its subject (the server said so at once).
    pub fn is_no_responders(&self) -> bool {
        matches!(self, BusError::Publish { reason, .. } if reason.starts_with(NO_RESPONDERS))
    }
}

/// The dead-letter stream's name for a consuming context, e.g. `DLQ_BASKETS`.
pub fn dead_letter_stream(context: &str) -> String {
    format!("DLQ_{}", context.to_ascii_uppercase())
}

/// The dead-letter subjects' prefix for a consuming context, e.g. `dlq.baskets`.
pub fn dead_letter_subject_prefix(context: &str) -> String {
    format!("dlq.{context}")
}

/// A header's value: the exact name first, then ignoring case (some clients lower-case names).
fn header_value<'a>(headers: Option<&'a async_nats::HeaderMap>, name: &str) -> Option<&'a str> {
    // One pass over the few headers a message carries, without hashing the name (a `HeaderMap`
    // lookup builds a `HeaderName` for it): decoding probes six names per message, most of them
    // absent, and the lookups were a fifth of decoding in the profile.
    let mut loose = None;
    for (key, values) in headers?.iter() {
        let key: &str = key.as_ref();
        if key == name {
            return values.first().map(|v| v.as_str());
        }
        if loose.is_none() && key.eq_ignore_ascii_case(name) {
            loose = values.first().map(|v| v.as_str());
        }
    }
    loose
}

/// Header values cannot hold line breaks.
fn sanitize_header(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    flat.chars().take(512).collect()
}

async fn await_ack(subject: &str, ack: jetstream::context::PublishAckFuture) -> Result<PublishReceipt, BusError> {
    let ack = ack.await.map_err(|e| BusError::Publish { subject: subject.to_string(), reason: e.to_string() })?;
    Ok(PublishReceipt { stream_seq: ack.sequence, duplicate: ack.duplicate })
}

/// Requests arriving on a served subject.
pub struct RequestStream {
    subscriber: async_nats::Subscriber,
}

impl RequestStream {
    /// The next request, waiting at most `max_wait`; `Ok(None)` when none came.
    pub async fn next(&mut self, max_wait: Duration) -> Result<Option<IncomingRequest>, BusError> {
        match tokio::time::timeout(max_wait, self.subscriber.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(BusError::Pull { durable: "(requests)".into(), reason: "subscription ended".into() }),
            Ok(Some(message)) => Ok(Some(IncomingRequest {
                subject: message.subject.to_string(),
                headers: message.headers,
                payload: message.payload,
                reply: message.reply,
            })),
        }
    }
}

/// One request.
pub struct IncomingRequest {
    /// Where it was sent.
    pub subject: String,
    headers: Option<async_nats::HeaderMap>,
    /// Its body.
    pub payload: Bytes,
    reply: Option<async_nats::Subject>,
}

impl IncomingRequest {
    /// A header's value, ignoring case when the exact name is absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(self.headers.as_ref(), name)
    }
}

/// A message in a dead-letter stream.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub seq: u64,
    /// Its subject there (`dlq.<context>.<original subject>`).
    pub subject: String,
    /// The original headers plus the `Carrier-Dlq-*` ones.
    pub headers: Vec<(String, String)>,
    /// The original body.
    pub body: Bytes,
    /// When it was dead-lettered, Unix nanoseconds.
    pub stored_at_unix_nanos: i128,
}

impl DeadLetter {
    fn from_stream_message(message: jetstream::message::StreamMessage) -> Self {
        let mut headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|(k, values)| values.iter().map(move |v| (k.to_string(), v.as_str().to_string())))
            .collect();
        headers.sort();
        DeadLetter {
            seq: message.sequence,
            subject: message.subject.to_string(),
            headers,
            body: message.payload,
            stored_at_unix_nanos: message.time.unix_timestamp_nanos(),
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The dead event's envelope, in whichever framing it came; `None` when the envelope itself
    /// is what could not be read.
    pub fn envelope(&self) -> Option<carrier_messages::Envelope> {
        // The copy's Nats-Msg-Id is its own (`dlq:...`), not the event's: leave it out.
        let header = |name: &str| if name.eq_ignore_ascii_case("Nats-Msg-Id") { None } else { self.header(name) };
        carrier_messages::Envelope::read(header, &self.body).ok().map(|framed| framed.envelope)
    }
}

/// What the server reports of a durable consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// The subjects it takes.
    pub filter_subjects: Vec<String>,
    /// The last stream sequence delivered.
    pub delivered_stream_seq: u64,
    /// Every stream sequence up to this one is acknowledged.
    pub ack_floor_stream_seq: u64,
    /// Messages in the stream not yet delivered: the consumer's lag.
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting at the server.
    pub waiting: u64,
}

/// JetStream's answer to a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishReceipt {
    /// Where the message was stored (the original's sequence for a duplicate).
    pub stream_seq: u64,
    /// JetStream recognised the `Nats-Msg-Id` and dropped the message.
    pub duplicate: bool,
}

/// What a durable consumer is.
#[derive(Clone, Debug)]
pub struct DurableSpec {
    /// The stream it reads.
    pub stream: String,
    /// Its durable name, unique per consuming context and stream.
    pub durable: String,
    /// What it is for.
    pub description: String,
    /// The subjects it takes (one filter: servers before 2.10 ignore several).
    pub filter_subject: String,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Delivered but unacknowledged messages the server allows.
    pub max_ack_pending: i64,
    /// The most messages handed over at once.
    pub batch_max: usize,
    /// After the first message of a batch, how long to wait for more before handing it over.
    /// Larger batches mean fewer commits (each one an fsync); the price is this much latency.
    pub linger: Duration,
    /// When set, the server deletes the durable after this long without a pull: for a read
    /// model instance's own durables, which a retired instance would otherwise leave for ever.
    /// Nothing is lost by it: the instance's checkpoint positions a new one when it returns.
    pub inactive_threshold: Option<Duration>,
}

/// A durable pull consumer with its message stream.
pub struct DurableConsumer {
    durable: String,
    consumer: jetstream::consumer::PullConsumer,
    messages: ReadyChunks<pull::Stream>,
    /// Pulled beyond the last batch's limit; handed over first next time.
    overflow: std::collections::VecDeque<PullItem>,
    batch_max: usize,
    linger: Duration,
    /// Events the stream no longer held when this consumer was made: (first sequence asked
    /// for, first sequence retained). JetStream says nothing of it: asked to start below its
    /// first retained sequence, a consumer silently starts at the first one.
    trimmed: Option<(u64, u64)>,
}

type PullItem = Result<jetstream::Message, pull::MessagesError>;

impl DurableConsumer {
    /// The durable name.
    pub fn name(&self) -> &str {
        &self.durable
    }

    /// The events the stream had dropped (by its limits or a purge) before this consumer could
    /// read them: the first sequence it was asked to start at and the first the stream still
    /// holds. `None` when nothing was missing.
    pub fn trimmed(&self) -> Option<(u64, u64)> {
        self.trimmed
    }

    /// The next batch of whatever has arrived, waiting at most `max_wait` for the first message.
    /// `Ok(empty)` means nothing arrived in time.
    pub async fn next_batch(&mut self, max_wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut chunk: Vec<PullItem> = self.overflow.drain(..self.overflow.len().min(self.batch_max)).collect();
        if chunk.is_empty() {
            chunk = match tokio::time::timeout(max_wait, self.messages.next()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => return Err(self.ended()),
                Ok(Some(chunk)) => chunk,
            };
        }
        // Under load more is on its way: linger briefly to fill the batch.
        let linger_until = tokio::time::Instant::now() + self.linger;
        while chunk.len() < self.batch_max {
            match tokio::time::timeout_at(linger_until, self.messages.next()).await {
                Err(_) => break,
                Ok(None) => return Err(self.ended()),
                Ok(Some(more)) => chunk.extend(more),
            }
        }
        if chunk.len() > self.batch_max {
            self.overflow.extend(chunk.drain(self.batch_max..));
        }
        let mut batch = Vec::with_capacity(chunk.len());
        let mut stream = None;
        for item in chunk {
            match item {
                Ok(message) => batch.push(Delivery::from_message(message, &mut stream)?),
                Err(e) => match e.kind() {
                    // A missed heartbeat or a failed pull is transient: the client re-issues pulls.
                    pull::MessagesErrorKind::MissingHeartbeat | pull::MessagesErrorKind::Pull => {
                        tracing::debug!(consumer = %self.durable, error = %e, "transient pull error");
                    }
                    _ => return Err(BusError::Pull { durable: self.durable.clone(), reason: e.to_string() }),
                },
            }
        }
        Ok(batch)
    }

    fn ended(&self) -> BusError {
        BusError::Pull { durable: self.durable.clone(), reason: "message stream ended".into() }
    }

    /// The server's view of this consumer: (pending, ack pending, delivered stream sequence).
    pub async fn lag(&mut self) -> Result<(u64, usize, u64), BusError> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| BusError::Pull { durable: self.durable.clone(), reason: e.to_string() })?;
        Ok((info.num_pending, info.num_ack_pending, info.delivered.stream_sequence))
    }
}

/// One delivered message.
pub struct Delivery {
    /// The subject it was published on.
    pub subject: String,
    /// Its headers.
    headers: Option<async_nats::HeaderMap>,
    /// Its body.
    pub payload: Bytes,
    /// The stream it came from (shared by the deliveries of one batch).
    pub stream_name: Arc<str>,
    /// Its stream sequence.
    pub stream_seq: u64,
    /// How many times it has been delivered (1 the first time).
    pub delivered: i64,
    acker: jetstream::message::Acker,
}

impl Delivery {
    /// `stream` keeps the last stream name seen, so that a batch shares one allocation of it.
    fn from_message(message: jetstream::Message, stream: &mut Option<Arc<str>>) -> Result<Delivery, BusError> {
        let (stream_name, stream_seq, delivered) = {
            let info = message.info().map_err(|e| BusError::Ack(format!("delivery without JetStream info: {e}")))?;
            let name = match stream.as_ref() {
                Some(name) if **name == *info.stream => name.clone(),
                _ => stream.insert(Arc::from(info.stream)).clone(),
            };
            (name, info.stream_sequence, info.delivered)
        };
        let (message, acker) = message.split();
        Ok(Delivery {
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload,
            stream_name,
            stream_seq,
            delivered,
            acker,
        })
    }

    /// A header's value; exact name first, then ignoring case (some clients lower-case names).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(self.headers.as_ref(), name)
    }

    /// Acknowledges this message and, under `AckPolicy::All`, every earlier one.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.acker.ack().await.map_err(|e| BusError::Ack(e.to_string()))
    }

    /// Stops redelivery of this message (it was dead-lettered).
    pub async fn term(&self) -> Result<(), BusError> {
        self.acker.ack_with(AckKind::Term).await.map_err(|e| BusError::Ack(e.to_string()))
    }

    /// Asks for redelivery after `delay`.
    pub async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.acker.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| BusError::Ack(e.to_string()))
    }

    /// Tells the server work is still going on, resetting its ack timer.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.acker.ack_with(AckKind::Progress).await.map_err(|e| BusError::Ack(e.to_string()))
    }
}

/// Every header as a (name, value) pair.
fn header_pairs(headers: &async_nats::HeaderMap) -> Vec<(String, String)> {
    headers.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string()))).collect()
}

/// Why [`Bus::append`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone appended to the aggregate since it was loaded (JetStream error 10071).
    #[error("{subject} moved past sequence {expected} (another writer appended first)")]
    Conflict {
        /// The aggregate's subject.
        subject: String,
        /// The last sequence the writer had seen.
        expected: u64,
    },
    /// Anything else.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A message read back from a stream by its sequence.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// Its subject.
    pub subject: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub payload: Bytes,
    /// Its stream sequence.
    pub stream_seq: u64,
}

impl StoredMessage {
    /// A header by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A key-value bucket of snapshots (see [`Bus::snapshot_bucket`]).
#[derive(Clone)]
pub struct SnapshotBucket {
    store: jetstream::kv::Store,
}

impl SnapshotBucket {
    /// The value at `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BusError> {
        self.store
            .get(key)
            .await
            .map_err(|e| BusError::Stream { stream: format!("snapshot {key}"), reason: e.to_string() })
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), BusError> {
        self.store
            .put(key, value.into())
            .await
            .map(|_| ())
            .map_err(|e| BusError::Stream { stream: format!("snapshot {key}"), reason: e.to_string() })
    }
}

/// A key-value bucket of leases (see [`Bus::lease_bucket`]).
#[derive(Clone)]
pub struct LeaseBucket {
    store: jetstream::kv::Store,
}

/// What [`LeaseBucket::claim`] found.
#[derive(Debug)]
pub enum Claimed {
    /// The key is ours, at this revision.
    Held(u64),
    /// Someone else's value holds it.
    Taken(Vec<u8>),
}

impl LeaseBucket {
    /// Takes `key` with `value` unless another holder's value is there; a value `mine` accepts
    /// (our own, left by a process of ours that died) is taken over at once.
    pub async fn claim(&self, key: &str, value: Vec<u8>, mine: impl Fn(&[u8]) -> bool) -> Result<Claimed, BusError> {
        let failed = |reason: String| BusError::Stream { stream: format!("lease {key}"), reason };
        let mut last = String::from("the lease kept changing while it was being claimed");
        for _ in 0..5 {
            match self.store.create(key, value.clone().into()).await {
                Ok(revision) => return Ok(Claimed::Held(revision)),
                Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(e.to_string())),
            }
            let Some(entry) = self.store.entry(key).await.map_err(|e| failed(e.to_string()))? else {
                continue; // expired in between: try again
            };
            if !mine(&entry.value) {
                return Ok(Claimed::Taken(entry.value.to_vec()));
            }
            match self.store.update(key, value.clone().into(), entry.revision).await {
                Ok(revision) => return Ok(Claimed::Held(revision)),
                // Someone wrote in between, or the bucket has no leader for the moment: look
                // again, and say the last error if it never works.
                Err(e) => last = format!("cannot take it over: {e}"),
            }
        }
        Err(failed(last))
    }

    /// Every live key and its value.
    pub async fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, BusError> {
        let failed = |reason: String| BusError::Stream { stream: "leases".into(), reason };
        let mut keys = self.store.keys().await.map_err(|e| failed(e.to_string()))?;
        let mut entries = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed(e.to_string()))?;
            if let Some(value) = self.store.get(&key).await.map_err(|e| failed(e.to_string()))? {
                entries.push((key, value.to_vec()));
            }
        }
        Ok(entries)
    }

    /// Writes `value` again at `revision` (extending its life); fails if anyone else wrote it.
    pub async fn renew(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<u64, BusError> {
        self.store
            .update(key, value.into(), revision)
            .await
            .map_err(|e| BusError::Stream { stream: format!("lease {key}"), reason: e.to_string() })
    }

    /// Gives `key` up if it is still at `revision`.
    pub async fn release(&self, key: &str, revision: u64) -> Result<(), BusError> {
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| BusError::Stream { stream: format!("lease {key}"), reason: e.to_string() })
    }
}
