//! [`ServeSession`]: the serving side of one peer session, sans-IO.

use super::{answer_have, Answer, ObjectSource};
use crate::ecp::{check_hello, ErrorCode, HelloMismatch, Message};
use left_store::NodeId;
use std::collections::VecDeque;

/// Why a serving session ended badly (the reply to the peer is already queued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer's hello does not match ours.
    #[error("peer refused: {0}")]
    Hello(#[from] HelloMismatch),
    /// The peer sent something out of order.
    #[error("peer sent {0} before Hello")]
    Unexpected(&'static str),
    /// The peer sent an `Error`.
    #[error("peer sent error {code}: {message}")]
    Peer {
        /// Its code.
        code: u16,
        /// Its text, control characters replaced.
        message: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    Ready,
    Closed,
}

/// One peer's session on the serving side: checks the peer's `Hello` and answers with ours,
/// answers `Have`/`Update` with `Same`/`Excess` (or its own `Have { head: None }` when it has
/// no head), and answers `GetNodes`/`GetChunks` lazily, at
/// most `max_pending` requests queued. When [`ServeSession::wants_input`] is false the driver
/// stops reading this peer's stream (backpressure), so a peer cannot make the server hold more
/// than `max_pending` requests (at most 1024 ids each) and one reply.
///
/// Drive it: [`ServeSession::handle_message`] for each decoded message (with the current head),
/// then send everything [`ServeSession::poll_message`] returns until `None`; close the stream when
/// [`ServeSession::is_closed`].
pub struct ServeSession {
    hello: Message,
    state: State,
    /// Replies ready to send (hello, Same/Excess, Working, errors).
    out: VecDeque<Message>,
    answers: VecDeque<Answer>,
    max_pending: usize,
    busy_ms: Option<u32>,
}

impl ServeSession {
    /// A session that will greet the peer with `hello` (a [`Message::Hello`]).
    pub fn new(hello: Message, max_pending: usize) -> ServeSession {
        ServeSession {
            hello,
            state: State::AwaitHello,
            out: VecDeque::new(),
            answers: VecDeque::new(),
            max_pending: max_pending.max(1),
            busy_ms: None,
        }
    }

    /// While set, object requests are answered with `Working { retry_after_ms }` (the store is
    /// busy: a gc may be deleting objects). Requests still pending when it is set are dropped
    /// and answered with one `Working` (the peer re-asks everything it was owed after the wait),
    /// so nothing more is read from the store until it is cleared.
    pub fn set_busy(&mut self, retry_after_ms: Option<u32>) {
        self.busy_ms = retry_after_ms;
        if let Some(ms) = retry_after_ms {
            if !self.answers.is_empty() {
                self.answers.clear();
                self.out.push_back(Message::Working { retry_after_ms: ms });
            }
        }
    }

    /// Whether the driver should read more from this peer.
    pub fn wants_input(&self) -> bool {
        self.state != State::Closed && self.answers.len() < self.max_pending
    }

    /// Whether the session is over (after the last queued message is sent, close the stream).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Feeds one message from the peer; `head` is our current head.
    pub fn handle_message(
        &mut self,
        msg: Message,
        head: Option<NodeId>,
    ) -> Result<(), SessionError> {
        match self.state {
            State::Closed => Ok(()),
            State::AwaitHello => {
                if let Err(e) = check_hello(&self.hello, &msg) {
                    let err = if let HelloMismatch::NotHello(kind) = e {
                        self.out.push_back(Message::Error {
                            code: ErrorCode::UNEXPECTED,
                            message: format!("expected Hello, got {kind}"),
                        });
                        SessionError::Unexpected(kind)
                    } else {
                        self.out.push_back(e.to_message());
                        SessionError::Hello(e)
                    };
                    self.state = State::Closed;
                    return Err(err);
                }
                self.out.push_back(self.hello.clone());
                self.state = State::Ready;
                Ok(())
            }
            State::Ready => {
                match msg {
                    Message::Have { head: theirs, .. } => {
                        let reply = answer_have(head, theirs).unwrap_or_else(|| self.empty_have());
                        self.out.push_back(reply);
                    }
                    Message::Update { head: theirs, .. } => {
                        let reply =
                            answer_have(head, Some(theirs)).unwrap_or_else(|| self.empty_have());
                        self.out.push_back(reply);
                    }
                    Message::GetNodes { .. } | Message::GetChunks { .. } => {
                        if let Some(ms) = self.busy_ms {
                            self.out.push_back(Message::Working { retry_after_ms: ms });
                        } else if let Some(a) = Answer::new(&msg) {
                            self.answers.push_back(a);
                        }
                    }
                    Message::Bye => self.state = State::Closed,
                    Message::Error { code, message } => {
                        self.state = State::Closed;
                        return Err(SessionError::Peer {
                            code: code.0,
                            message: message
                                .chars()
                                .map(|c| if c.is_control() { ' ' } else { c })
                                .collect(),
                        });
                    }
                    // Replies and repeated hellos need no answer from a server.
                    _ => {}
                }
                Ok(())
            }
        }
    }

    /// Our answer when we have no head: our own `Have { head: None }`, so the peer is not left
    /// waiting for a `Same` or `Excess` that will never come.
    fn empty_have(&self) -> Message {
        let share = match &self.hello {
            Message::Hello { share, .. } => *share,
            _ => crate::ecp::ShareId(left_store::Hash([0; 32])),
        };
        Message::Have { share, head: None }
    }

    /// The next message to send, or `None` when there is nothing to send now.
    pub fn poll_message(
        &mut self,
        src: &dyn ObjectSource,
    ) -> Result<Option<Message>, left_store::Error> {
        if let Some(m) = self.out.pop_front() {
            return Ok(Some(m));
        }
        while let Some(a) = self.answers.front_mut() {
            match a.poll(src)? {
                Some(m) => return Ok(Some(m)),
                None => {
                    self.answers.pop_front();
                }
            }
        }
        Ok(None)
    }
}
