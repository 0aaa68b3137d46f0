//! The [`Stream`] handle: async writes (copying or not), finish, reset and reads over one rdt
//! stream, each waiting on its connection's `Notify` for credit or data, which is the
//! backpressure. What this is not: the endpoint and connection handles and the shared state
//! (`driver.rs`), or the task that moves datagrams (`task.rs`).

use bytes::Bytes;

use super::{core_conn, Connection, NetError, Stream};
use crate::rdt::{StreamError, StreamId};

impl Stream {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The connection the stream belongs to.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Writes some of `data`, waiting until flow control accepts at least one byte (or `data` is
    /// empty). Returns how many bytes were accepted.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, NetError> {
        if data.is_empty() {
            return Ok(0);
        }
        let id = self.id;
        self.conn
            .wait(
                |state, h| match core_conn(state, h).map(|c| c.write(id, data)) {
                    Ok(Ok(0)) => None,
                    Ok(Ok(n)) => Some(Ok(n)),
                    Ok(Err(e)) => Some(Err(NetError::Stream(e))),
                    Err(e) => Some(Err(e)),
                },
            )
            .await
    }

    /// Writes all of `data`, waiting for flow control as needed.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), NetError> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes all of `data` without copying it, waiting for flow control as needed.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> Result<(), NetError> {
        let id = self.id;
        while !data.is_empty() {
            let n = self
                .conn
                .wait(|state, h| {
                    match core_conn(state, h).map(|c| c.write_bytes(id, data.clone())) {
                        Ok(Ok(0)) => None,
                        Ok(Ok(n)) => Some(Ok(n)),
                        Ok(Err(e)) => Some(Err(NetError::Stream(e))),
                        Err(e) => Some(Err(e)),
                    }
                })
                .await?;
            let _ = data.split_to(n);
        }
        Ok(())
    }

    /// Ends the stream after what was written; the peer's reads then return `None`.
    pub fn finish(&mut self) -> Result<(), NetError> {
        let shared = &self.conn.inner.shared;
        let result = core_conn(&mut shared.lock(), self.conn.inner.handle)
            .and_then(|c| c.finish(self.id).map_err(NetError::Stream));
        shared.wake_driver.notify_one();
        result
    }

    /// Waits until everything written on this finished stream was acknowledged by the peer.
    pub async fn finished(&mut self) -> Result<(), NetError> {
        let id = self.id;
        self.conn
            .wait(|state, h| {
                if state
                    .slots
                    .get(&h)
                    .is_some_and(|s| s.finished.contains(&id))
                {
                    return Some(Ok(()));
                }
                core_conn(state, h).err().map(Err)
            })
            .await
    }

    /// Abandons sending with an application error `code`.
    pub fn reset(&mut self, code: u64) -> Result<(), NetError> {
        let shared = &self.conn.inner.shared;
        let result = core_conn(&mut shared.lock(), self.conn.inner.handle)
            .and_then(|c| c.reset(self.id, code).map_err(NetError::Stream));
        shared.wake_driver.notify_one();
        result
    }

    /// Reads up to `max` bytes in order, waiting for data. `None` once the peer finished the stream
    /// and everything was read.
    pub async fn read(&mut self, max: usize) -> Result<Option<Bytes>, NetError> {
        if self.ended {
            return Ok(None);
        }
        let id = self.id;
        let result = self
            .conn
            .wait(
                |state, h| match core_conn(state, h).map(|c| c.read(id, max)) {
                    Ok(Ok(chunk)) => Some(Ok(chunk)),
                    Ok(Err(StreamError::Blocked)) => None,
                    Ok(Err(e)) => Some(Err(NetError::Stream(e))),
                    Err(e) => Some(Err(e)),
                },
            )
            .await;
        self.ended = matches!(result, Ok(None));
        result
    }

    /// Reads every in-order chunk available now, up to about `max` bytes, into `out`, waiting until
    /// there is at least one. Returns the number of bytes appended; `None` once the peer finished
    /// the stream and everything was read. One lock and one driver wake-up per batch instead of per
    /// chunk: the fast path for bulk receivers.
    pub async fn read_chunks(
        &mut self,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<Option<usize>, NetError> {
        if self.ended {
            return Ok(None);
        }
        let id = self.id;
        let mut ended = false;
        let result = self
            .conn
            .wait(|state, h| {
                let c = match core_conn(state, h) {
                    Ok(c) => c,
                    Err(e) => return Some(Err(e)),
                };
                let mut total = 0;
                while total < max {
                    match c.read(id, max - total) {
                        Ok(Some(chunk)) => {
                            total += chunk.len();
                            out.push(chunk);
                        }
                        Ok(None) => {
                            // Data read with the end goes out now; the next call reports the end.
                            ended = true;
                            return Some(Ok((total > 0).then_some(total)));
                        }
                        Err(StreamError::Blocked) => break,
                        Err(e) if total == 0 => return Some(Err(NetError::Stream(e))),
                        Err(_) => break,
                    }
                }
                (total > 0).then_some(Ok(Some(total)))
            })
            .await;
        self.ended = ended;
        result
    }

    /// Reads until the peer finishes the stream; fails if more than `limit` bytes arrive.
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, NetError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.read(usize::MAX).await? {
            if out.len() + chunk.len() > limit {
                return Err(NetError::Io(format!(
                    "stream longer than the {limit}-byte limit"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}
