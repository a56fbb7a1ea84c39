//! One [`TableChange`](crate::ruleset::TableChange) as one nf_tables batch: built, sent in one
//! `sendmsg`, and answered.
//!
//! The kernel applies a batch as one transaction (nfnetlink's BATCH_BEGIN .. BATCH_END): it
//! processes every message, and if any fails it aborts them all. Each message here carries
//! NLM_F_ACK, so the answer names the failing message by sequence number, and with extended acks
//! the failing element inside it by offset. The answers are queued by the time `sendmsg`
//! returns (nfnetlink handles the batch in the sender's context); only the batch end, which
//! asks for no answer, would be waited for in vain after a failure.

use std::io;
use std::ops::Range;
use std::rc::Rc;

use super::netlink::{self, Reply};
use super::program::{self, map_name};
use super::sys::{self, ElementBytes, MsgBuf, Socket};
use super::udata;
use super::{describe, Error, KernelError};
use crate::ruleset::{Element, TableChange, TABLE};
use crate::timing::timed;

const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
/// Elements per message are limited by their nest's 16-bit length; stay well below it.
const ELEMENTS_BYTES_PER_MESSAGE: usize = 48 * 1024;
/// Room for one answer datagram.
const RECV_BYTES: usize = 64 * 1024;
/// How long to wait for answers still missing once the queued ones are read.
const ANSWER_TIMEOUT_MS: i32 = 5000;

/// Applies `change` to gearnat's table in the calling thread's network namespace, as one atomic
/// batch: delete the table, create it with its layout, remove elements, add elements. Nothing
/// is sent when the change is empty.
///
/// The batch fails as a whole, changing nothing, when the table to delete is missing, the
/// table to create exists, an element to remove is missing (by key) or one to add exists (by
/// key, whatever its target). Removing and adding the same key in one change retargets it.
pub fn commit(change: &TableChange) -> Result<(), Error> {
    send_batch(change, None).map(|_| ())
}

/// [`commit`], on condition that nothing changed the namespace's ruleset since a dump read it
/// at `generation`. Returns `Some` of the generation the batch made when the condition held
/// and nothing was committed after it: then the table is now exactly the one that dump read,
/// changed by `change`. Otherwise `None`: if the condition failed, the kernel refused the batch
/// without changing anything, and the change was committed again without it (the generation
/// counts changes to every table, most of them not gearnat's).
pub fn commit_on(change: &TableChange, generation: u32) -> Result<Option<u32>, Error> {
    match send_batch(change, Some(generation)) {
        Err(Error::Batch(KernelError(libc::ERESTART))) => {
            log::debug!("the ruleset moved past generation {generation}; committing anyway");
            send_batch(change, None).map(|_| None)
        }
        result => {
            // The batch's own transaction made the next generation; any other number means
            // someone committed after it.
            let made = super::next_generation(generation);
            result.map(|now| now.filter(|now| *now == made))
        }
    }
}

/// Sends `change` as one batch; the generation right after it, read on the batch's socket,
/// when it was sent on condition of `generation`.
fn send_batch(change: &TableChange, generation: Option<u32>) -> Result<Option<u32>, Error> {
    if change.is_empty() {
        return Ok(None);
    }
    let batch = timed("build batch", || Batch::build(change, generation))?;
    let socket = Socket::open().map_err(Error::Socket)?;
    // nfnetlink runs the whole transaction, commit included, inside this sendmsg.
    timed("send batch (kernel commit)", || batch.send(&socket))?;
    let answers = timed("read answers", || batch.collect_answers(&socket))?;
    let checked = batch.check(&answers);
    // Asked on this socket: a new one would wait for the batch's freed objects, as its
    // release does (see `crate::release`).
    let (now, socket) = match (&checked, generation) {
        (Ok(()), Some(_)) => {
            let (now, socket) = super::dump::generation_on(socket, batch.next_seq());
            (now.ok(), socket)
        }
        _ => (None, socket),
    };
    socket.release();
    checked.map(|()| now)
}

/// What one message of the batch does, to name it when the kernel rejects it.
enum Step<'a> {
    Framing,
    DeleteTable,
    CreateTable,
    CreateMap(&'static str),
    CreateChain(&'static str),
    AddRule {
        chain: &'static str,
        number: usize,
    },
    /// Elements of one message, with where each one's attribute lies in the message.
    Elements {
        add: bool,
        map: &'static str,
        elements: Vec<(Range<usize>, &'a Element)>,
    },
}

struct Batch<'a> {
    buf: MsgBuf,
    /// The step of each message; message `i` has sequence number `FIRST_SEQ + i`.
    steps: Vec<Step<'a>>,
}

const FIRST_SEQ: u32 = 1;

impl<'a> Batch<'a> {
    fn build(change: &'a TableChange, generation: Option<u32>) -> Result<Batch<'a>, Error> {
        let additions = element_bytes(&change.add)?;
        let removals = element_keys(&change.remove);
        let capacity = 4096
            + (additions.iter().chain(&removals))
                .map(|e| e.bound())
                .sum::<usize>();
        let mut batch = Batch {
            buf: MsgBuf::with_capacity(capacity),
            steps: Vec::new(),
        };

        batch.push(Step::Framing, |buf, seq| {
            sys::put_batch_begin(buf, seq, generation)
        });
        if change.delete_table {
            let msg = libc::NFT_MSG_DELTABLE as u16;
            batch.push(Step::DeleteTable, |buf, seq| {
                sys::put_table(buf, msg, NLM_F_ACK, seq, TABLE, None)
            });
        }
        if let Some(layout) = &change.create {
            batch.create_table(&program::table(layout))?;
        }
        batch.elements(false, &change.remove, &removals);
        batch.elements(true, &change.add, &additions);
        batch.push(Step::Framing, sys::put_batch_end);
        Ok(batch)
    }

    /// The sequence number of the next message: its index, counted from `FIRST_SEQ`.
    fn next_seq(&self) -> u32 {
        FIRST_SEQ + self.steps.len() as u32
    }

    /// Appends one message built by `put` (given the buffer and the sequence number).
    fn push(&mut self, step: Step<'a>, put: impl FnOnce(&mut MsgBuf, u32) -> usize) {
        let seq = self.next_seq();
        put(&mut self.buf, seq);
        self.steps.push(step);
    }

    fn create_table(&mut self, table: &program::Table) -> Result<(), Error> {
        let comment = udata::comment(&table.comment)
            .ok_or_else(|| Error::TableComment(table.comment.clone()))?;
        let create = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let msg = libc::NFT_MSG_NEWTABLE as u16;
        self.push(Step::CreateTable, |buf, seq| {
            sys::put_table(buf, msg, create, seq, TABLE, Some(&comment))
        });
        // nft's order (chains, then maps), so that the objects get the same handles.
        for chain in &table.chains {
            self.push(Step::CreateChain(chain.name), |buf, seq| {
                sys::put_chain(buf, create, seq, TABLE, chain)
            });
        }
        for map in &table.maps {
            self.push(Step::CreateMap(map.name), |buf, seq| {
                sys::put_map(buf, create, seq, TABLE, map)
            });
        }
        let append = NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        for chain in &table.chains {
            for (i, rule) in chain.rules.iter().enumerate() {
                let step = Step::AddRule {
                    chain: chain.name,
                    number: i + 1,
                };
                self.push(step, |buf, seq| {
                    sys::put_rule(buf, append, seq, TABLE, chain.name, rule)
                });
            }
        }
        Ok(())
    }

    /// Messages adding (or removing) `elements`, grouped by map, as many per message as fit.
    fn elements(&mut self, add: bool, elements: &'a [Element], bytes: &[ElementBytes]) {
        let (msg, flags) = if add {
            (
                libc::NFT_MSG_NEWSETELEM as u16,
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            (libc::NFT_MSG_DELSETELEM as u16, NLM_F_ACK)
        };
        for map in program::MAP_NAMES {
            let mine: Vec<usize> = (0..elements.len())
                .filter(|i| map_name(&elements[*i]) == map)
                .collect();
            for chunk in chunks(&mine, bytes) {
                let chunk_bytes: Vec<&ElementBytes> = chunk.iter().map(|i| &bytes[*i]).collect();
                let seq = self.next_seq();
                let (_, ranges) = sys::put_element_list(
                    &mut self.buf,
                    msg,
                    flags,
                    seq,
                    (TABLE, map),
                    &chunk_bytes,
                );
                let located = ranges.into_iter().zip(chunk.iter().map(|i| &elements[*i]));
                let elements = located.collect();
                self.steps.push(Step::Elements { add, map, elements });
            }
        }
    }

    fn send(&self, socket: &Socket) -> Result<(), Error> {
        let bytes = self.buf.len();
        // The whole batch must fit the send buffer (netlink_sendmsg refuses larger datagrams),
        // and every answer the receive buffer, or the kernel drops answers (ENOBUFS).
        let receive = (self.steps.len() * 2048).max(1 << 20);
        socket
            .force_buffers(bytes + 64 * 1024, receive)
            .map_err(|error| Error::SocketBuffers { bytes, error })?;
        log::debug!(
            "sending an nf_tables batch of {} messages, {bytes} bytes",
            self.steps.len()
        );
        socket
            .send(self.buf.as_bytes())
            .map_err(|error| Error::Send { bytes, error })
    }

    /// The kernel's answer to each message (by index), as far as it answered.
    fn collect_answers(&self, socket: &Socket) -> Result<Vec<Option<Reply>>, Error> {
        let mut answers: Vec<Option<Reply>> = vec![None; self.steps.len()];
        let mut buf = MsgBuf::with_capacity(RECV_BYTES);
        let awaited = self.steps.len() - 2; // all but the batch begin and end
        let mut answered = 0;
        let mut failed = false;
        loop {
            match socket.recv(&mut buf, RECV_BYTES, false) {
                Ok(()) => {
                    let messages = netlink::messages(buf.as_bytes()).ok_or(Error::Parse {
                        what: "netlink answer",
                    })?;
                    for message in messages {
                        let Some(i) = message.seq.checked_sub(FIRST_SEQ) else {
                            continue;
                        };
                        let Some(slot) = answers.get_mut(i as usize) else {
                            continue;
                        };
                        let reply = message.reply();
                        if matches!(reply, Reply::Ack | Reply::Error { .. }) && slot.is_none() {
                            failed |= matches!(reply, Reply::Error { .. });
                            answered += 1;
                            *slot = Some(reply);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if failed || answered >= awaited {
                        break;
                    }
                    if !socket
                        .wait_readable(ANSWER_TIMEOUT_MS)
                        .map_err(Error::Receive)?
                    {
                        break;
                    }
                }
                Err(e) => return Err(Error::Receive(e)),
            }
        }
        Ok(answers)
    }

    /// The first failure the kernel reported, named after its object; or an error when answers
    /// are missing although none reported a failure.
    fn check(&self, answers: &[Option<Reply>]) -> Result<(), Error> {
        let mut first = None;
        for (i, answer) in answers.iter().enumerate() {
            if let Some(Reply::Error {
                errno,
                bad_attr_offset,
            }) = answer
            {
                let error = self.step_error(&self.steps[i], KernelError(*errno), *bad_attr_offset);
                if first.is_none() {
                    first = Some(error);
                } else {
                    log::debug!("also rejected in the same batch: {error}");
                }
            }
        }
        if let Some(error) = first {
            return Err(error);
        }
        let answered = answers.iter().filter(|a| a.is_some()).count();
        let sent = self.steps.len() - 2;
        if answered < sent {
            return Err(Error::Unanswered { sent, answered });
        }
        Ok(())
    }

    fn step_error(&self, step: &Step, errno: KernelError, bad_attr: Option<u32>) -> Error {
        match step {
            Step::Framing => Error::Batch(errno),
            Step::DeleteTable => Error::DeleteTable { errno },
            Step::CreateTable => Error::CreateTable { errno },
            Step::CreateMap(map) => Error::CreateMap { map, errno },
            Step::CreateChain(chain) => Error::CreateChain { chain, errno },
            Step::AddRule { chain, number } => Error::AddRule {
                chain,
                number: *number,
                errno,
            },
            Step::Elements { add, map, elements } => {
                let at = bad_attr.map(|o| o as usize);
                let culprit = at.and_then(|at| elements.iter().find(|(r, _)| r.contains(&at)));
                let element = match culprit {
                    Some((_, element)) => describe(element),
                    None => format!("in map {map} ({} sent together)", elements.len()),
                };
                if *add {
                    Error::AddElement { element, errno }
                } else {
                    Error::RemoveElement { element, errno }
                }
            }
        }
    }
}

/// Key, data and comment bytes of each element; refuses comments nft could not load.
fn element_bytes(elements: &[Element]) -> Result<Vec<ElementBytes>, Error> {
    // An instance's elements come one after another and share its comment: it is built once
    // per run of them.
    let mut last: Option<(&crate::ruleset::Owner, Rc<[u8]>)> = None;
    elements
        .iter()
        .map(|element| {
            let owner = element.owner();
            let userdata = match &last {
                Some((o, userdata)) if *o == owner => userdata.clone(),
                _ => {
                    let comment = owner.comment();
                    let userdata = udata::comment(&comment).ok_or_else(|| Error::Comment {
                        element: describe(element),
                        comment: comment.clone(),
                        max: udata::COMMENT_MAX_LEN,
                    })?;
                    let userdata: Rc<[u8]> = userdata.into();
                    last = Some((owner, userdata.clone()));
                    userdata
                }
            };
            let (key, data) = program::element_key_data(element);
            Ok(ElementBytes {
                key,
                data,
                userdata,
            })
        })
        .collect()
}

/// Only the keys: the kernel finds an element to delete by its key (as `nft delete element`).
fn element_keys(elements: &[Element]) -> Vec<ElementBytes> {
    let key = |element| program::element_key_data(element).0;
    let none: Rc<[u8]> = Rc::new([]);
    elements
        .iter()
        .map(|element| ElementBytes {
            key: key(element),
            data: Default::default(),
            userdata: none.clone(),
        })
        .collect()
}

/// Splits element indexes into runs whose messages stay under the per-message size.
fn chunks<'i>(indexes: &'i [usize], bytes: &[ElementBytes]) -> Vec<&'i [usize]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (n, i) in indexes.iter().enumerate() {
        let len = bytes[*i].bound();
        if size + len > ELEMENTS_BYTES_PER_MESSAGE && n > start {
            out.push(&indexes[start..n]);
            (start, size) = (n, 0);
        }
        size += len;
    }
    if start < indexes.len() {
        out.push(&indexes[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;
    use crate::ruleset::{Layout, Owner};

    fn port(host_port: u16) -> Element {
        Element::Port {
            proto: Proto::Tcp,
            host_port,
            target: "10.211.0.2:80".parse().unwrap(),
            owner: Owner {
                deployment: "seed".into(),
                instance: format!("web-{host_port}").into(),
            },
        }
    }

    #[test]
    fn one_batch_in_order() {
        let change = TableChange {
            delete_table: true,
            create: Some(Layout::Host {
                pool: "10.211.0.0/16".parse().unwrap(),
            }),
            remove: vec![port(1)],
            add: (2..2002).map(port).collect(),
        };
        let batch = Batch::build(&change, None).unwrap();
        let kinds: Vec<&str> = batch
            .steps
            .iter()
            .map(|s| match s {
                Step::Framing => "framing",
                Step::DeleteTable => "delete",
                Step::CreateTable => "table",
                Step::CreateMap(_) => "map",
                Step::CreateChain(_) => "chain",
                Step::AddRule { .. } => "rule",
                Step::Elements { add: false, .. } => "remove",
                Step::Elements { add: true, .. } => "add",
            })
            .collect();
        let head = [
            "framing", "delete", "table", "chain", "chain", "chain", "chain", "chain", "map", "map",
        ];
        assert_eq!(kinds[..10], head);
        assert_eq!(kinds[10..20], ["rule"; 10]);
        assert_eq!(kinds[20], "remove");
        assert!(kinds[21..kinds.len() - 1].iter().all(|k| *k == "add"));
        assert!(kinds.len() - 22 > 1, "2000 elements take several messages");
        assert_eq!(kinds.last(), Some(&"framing"));

        // Every element was placed, in order, and located in its message.
        let added: Vec<&Element> = batch
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Elements {
                    add: true,
                    elements,
                    ..
                } => Some(elements),
                _ => None,
            })
            .flatten()
            .map(|(_, e)| *e)
            .collect();
        assert_eq!(added, change.add.iter().collect::<Vec<_>>());
        let messages = netlink::messages(batch.buf.as_bytes()).unwrap();
        assert_eq!(messages.len(), batch.steps.len());
        assert!(messages.iter().all(|m| m.bytes.len() < 65536));
        assert!(messages
            .iter()
            .zip(FIRST_SEQ..)
            .all(|(m, seq)| m.seq == seq));
    }

    #[test]
    fn overlong_comment_is_refused_before_sending() {
        let mut element = port(80);
        if let Element::Port { owner, .. } = &mut element {
            owner.instance = "x".repeat(200).into();
        }
        let change = TableChange {
            add: vec![element],
            ..TableChange::default()
        };
        assert!(matches!(
            Batch::build(&change, None),
            Err(Error::Comment { .. })
        ));
    }
}
