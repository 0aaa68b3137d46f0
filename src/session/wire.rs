//! ecp frames on a driver [`Stream`]: a reader that decodes as bytes arrive and a writer that
//! batches frames into one stream write.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::ecp::{self, DecodeError, Decoder, EncodeError, Message};
use crate::net::driver::{NetError, Stream};

/// Most stream bytes taken from the transport in one read.
const READ_BATCH: usize = 1 << 20;

/// Why reading a message failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The connection or stream failed.
    #[error("{0}")]
    Net(#[from] NetError),
    /// The peer sent bytes that are not an ecp message.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("the peer ended the stream in the middle of a message")]
    Truncated,
}

/// Why writing a message failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The connection or stream failed.
    #[error("{0}")]
    Net(#[from] NetError),
    /// The message breaks a limit (a bug on our side, never the peer's input).
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// Decodes messages from a stream. Holds at most one read batch plus one partial frame.
pub struct FrameReader {
    stream: Stream,
    decoder: Decoder,
    pending: VecDeque<Bytes>,
    scratch: Vec<Bytes>,
    ended: bool,
}

impl FrameReader {
    /// A reader of `stream`.
    pub fn new(stream: Stream) -> FrameReader {
        FrameReader {
            stream,
            decoder: Decoder::new(),
            pending: VecDeque::new(),
            scratch: Vec::new(),
            ended: false,
        }
    }

    /// The next message from bytes already received, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Message>, ReadError> {
        while let Some(front) = self.pending.front_mut() {
            let mut input: &[u8] = front;
            let r = self.decoder.decode(&mut input);
            let used = front.len() - input.len();
            let _ = front.split_to(used);
            if front.is_empty() {
                self.pending.pop_front();
            }
            if let Some(m) = r? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// The next message, waiting for bytes; `None` when the peer finished the stream cleanly.
    /// Cancel-safe: bytes read are kept for the next call.
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(m) = self.try_next()? {
                return Ok(Some(m));
            }
            if self.ended {
                return if self.decoder.buffered() > 0 {
                    Err(ReadError::Truncated)
                } else {
                    Ok(None)
                };
            }
            self.scratch.clear();
            match self
                .stream
                .read_chunks(READ_BATCH, &mut self.scratch)
                .await?
            {
                Some(_) => self.pending.extend(self.scratch.drain(..)),
                None => self.ended = true,
            }
        }
    }
}

/// Encodes messages into a buffer and writes it to the stream in one piece.
pub struct FrameWriter {
    stream: Stream,
    buf: Vec<u8>,
}

impl FrameWriter {
    /// A writer to `stream`.
    pub fn new(stream: Stream) -> FrameWriter {
        FrameWriter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Appends a message to the buffer.
    pub fn queue(&mut self, msg: &Message) -> Result<(), EncodeError> {
        ecp::encode_into(msg, &mut self.buf)
    }

    /// Bytes queued and not written yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued (waiting for flow control).
    pub async fn flush(&mut self) -> Result<(), NetError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        self.stream.write_bytes(data).await
    }

    /// Queues and writes one message.
    pub async fn send(&mut self, msg: &Message) -> Result<(), WriteError> {
        self.queue(msg)?;
        Ok(self.flush().await?)
    }

    /// Ends our side of the stream.
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }

    /// Ends our side of the stream and waits (at most `limit`) until the peer acknowledged
    /// everything written: a last `Error` then reaches it before the connection closes.
    pub async fn finish_and_wait(&mut self, limit: std::time::Duration) {
        if self.stream.finish().is_ok() {
            let _ = tokio::time::timeout(limit, self.stream.finished()).await;
        }
    }
}
