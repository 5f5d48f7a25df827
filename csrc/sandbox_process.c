/* bcoder.sandbox._process: the sandbox worker's loop (bcoder/sandbox/worker.py): it takes each request
 * of the pool, forks the program's process, watches it to its end, kills what it left and replies.
 * The protocol is in worker.py's docstring.
 *
 * Why C: every program's process is a fork of the worker, and each fork write-protects every page the
 * worker has written, so each page the worker writes before the next fork costs it a page fault. Python
 * writes to every object it touches (reference counts): the same loop in Python cost the worker some 200
 * faults and 0.65-0.8 ms of CPU per program, this one 14-17 faults and 0.3-0.38 ms (bench/RESULTS.md). It touches
 * its own stack and a few buffers; the worker runs Python again only in a program's process (or to remove
 * an unisolated program's work directory). Plain C and the CPython API, no other library. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 5     /* stdin, stdout, stderr, and the status memfd or the judge's channel [status, calls] */
#define REQUEST_FDS 3 /* the source, then the inputs (a standard-input run) or the channel [status, calls] */
#define STATUS_LIMIT (1 << 20)    /* bytes of a standard-input run's status lines sent on */
#define HIGH_FD 64    /* the child's copies are numbered from here up: above every fd arrange_fds writes */

static const char READY = '+', DONE = '-';   /* isolation.READY, isolation.DONE */

static double seconds_of(struct timeval t) { return t.tv_sec + t.tv_usec * 1e-6; }

static double monotonic(void) {               /* the clock of Python's time.monotonic() */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec * 1e-9;
}

static double children_cpu(void) {            /* CPU seconds of every process this one has reaped */
    struct rusage usage;
    getrusage(RUSAGE_CHILDREN, &usage);
    return seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
}

/* Unisolated (no PID namespace): SIGKILL to each process whose parent is this one. */
static void kill_children(void) {
    DIR *proc = opendir("/proc");
    if (proc == NULL)
        return;
    pid_t me = getpid();
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9')
            continue;
        char path[300], stat[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", entry->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0)
            continue;
        stat[n] = '\0';
        char *name_end = strrchr(stat, ')');  /* the command's name may hold anything, ')' too */
        char state;
        int parent;
        if (name_end != NULL && sscanf(name_end + 1, " %c %d", &state, &parent) == 2 && parent == me)
            kill((pid_t)atoi(entry->d_name), SIGKILL);
    }
    closedir(proc);
}

/* Kills and reaps every process a program started, daemons included. `isolated`: this process is the
 * init of a PID namespace holding only its programs' processes, so kill(-1) reaches them all and each
 * orphan is re-parented here. Else it is a child subreaper, and its children are killed one by one
 * (`pid`'s process group first). Either way, once no child is left, no descendant is left. */
static void kill_leftovers(int isolated, pid_t pid) {
    if (pid > 0 && !isolated)
        killpg(pid, SIGKILL);
    for (;;) {
        pid_t child = waitpid(-1, NULL, WNOHANG);
        if (child < 0) {
            if (errno == EINTR)
                continue;
            return;                           /* ECHILD: none left */
        }
        if (child == 0) {
            if (isolated)
                kill(-1, SIGKILL);
            else
                kill_children();
            usleep(500);
        }
    }
}

static PyObject *py_kill_leftovers(PyObject *self, PyObject *args) {
    int isolated;
    if (!PyArg_ParseTuple(args, "p", &isolated))
        return NULL;
    kill_leftovers(isolated, 0);
    Py_RETURN_NONE;
}

/* Sets the PID namespace's next pid (an fd of /proc/sys/kernel/ns_last_pid) uniformly over 2 .. pid_max - 1. */
static int scramble_pids(int counter, long pid_max) {
    unsigned int random;
    if (getrandom(&random, sizeof random, 0) != sizeof random)
        return -1;
    char text[32];
    int length = snprintf(text, sizeof text, "%ld", 1 + (long)(random % (unsigned long)(pid_max - 2)));
    return pwrite(counter, text, length, 0) == length ? 0 : -1;
}

static PyObject *py_scramble_pids(PyObject *self, PyObject *args) {
    int counter;
    long pid_max;
    if (!PyArg_ParseTuple(args, "il", &counter, &pid_max))
        return NULL;
    if (scramble_pids(counter, pid_max) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static void close_all(const int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* What this process learns of a program (how it ended: its exit code, the sizes of its output, its time and
 * memory, each the program's to choose) must not outlive its reply: every later program is forked from here
 * and can read this process's freed heap and dead stack in its own memory. So each buffer that held any of
 * it is cleared before it is freed, and the stack below the loop once the reply is sent. */
static void clear_and_free(void *buffer, size_t size) {
    if (buffer != NULL)
        explicit_bzero(buffer, size);
    free(buffer);
}

#define STACK_CLEARED 16384   /* bytes below the loop's frame: more than the reply and printf's work take */
/* The steps of the loop keep their frames below its own, where clear_stack reaches them. */
#define NOT_INLINED __attribute__((noinline))

NOT_INLINED static void clear_stack(void) {
    char below[STACK_CLEARED];
    explicit_bzero(below, sizeof below);
}

/* The signal's name as Python's signal.Signals names it ("signal N" where it has none). */
static const char *const SIGNAL_NAMES[32] = {
    NULL, "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL", "SIGUSR1",
    "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP",
    "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR",
    "SIGSYS"};

static void signal_name(int number, char *name, size_t size) {
    if (number > 0 && number < 32)
        snprintf(name, size, "%s", SIGNAL_NAMES[number]);
    else if (number == SIGRTMIN)
        snprintf(name, size, "SIGRTMIN");
    else if (number == SIGRTMAX)
        snprintf(name, size, "SIGRTMAX");
    else
        snprintf(name, size, "signal %d", number);
}

static PyObject *py_signal_name(PyObject *self, PyObject *args) {
    int number;
    char name[32];
    if (!PyArg_ParseTuple(args, "i", &number))
        return NULL;
    signal_name(number, name, sizeof name);
    return PyUnicode_FromString(name);
}

/* ---------------------------------------------------------------- the pool's request */
struct request {
    double timeout, wall;             /* CPU seconds the run's processes share; its wall-clock limit */
    int apps, stdio;                  /* stdio: a standard-input run, one with inputs */
    uint32_t n_inputs;
    uint64_t source_length;
    uint64_t *inputs;                 /* each input's length, in the inputs memfd one after the other */
    char *names;                      /* the names the tests take from the program, NUL between two */
    uint32_t names_length;
    int fds[REQUEST_FDS];
};

static void free_request(struct request *request) {
    close_all(request->fds, REQUEST_FDS);
    clear_and_free(request->inputs, sizeof(uint64_t) * (request->n_inputs + 1));
    clear_and_free(request->names, request->names_length + 1);
    request->inputs = NULL;
    request->names = NULL;
}

/* Reads exactly `size` bytes; 0 at end of file, -1 on an error. */
static int read_exactly(int fd, void *buffer, size_t size) {
    char *at = (char *)buffer;
    while (size) {
        ssize_t got = read(fd, at, size);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return (int)got;
        at += got;
        size -= (size_t)got;
    }
    return 1;
}

static uint64_t little_endian(const unsigned char *bytes, int size) {
    uint64_t value = 0;
    for (int i = size - 1; i >= 0; i--)
        value = value << 8 | bytes[i];
    return value;
}

/* The next request: 1, 0 once the pool has closed the socket, -1 with a Python error set. Framing as
 * messages.send's: a 4-byte big-endian length, the fds with it, then the body (worker.py's docstring). */
NOT_INLINED static int receive_request(int sock, struct request *request) {
    unsigned char header[4], fixed[33];   /* the body's fixed part: struct "<ddBIQI" (worker.REQUEST) */
    uint32_t size;
    union {
        struct cmsghdr align;
        char buffer[CMSG_SPACE(sizeof(int) * REQUEST_FDS)];
    } control;
    memset(request, 0, sizeof *request);
    for (int i = 0; i < REQUEST_FDS; i++)
        request->fds[i] = -1;
    struct iovec vector = {header, sizeof header};
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    ssize_t got;
    while ((got = recvmsg(sock, &message, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
    if (got == 0)
        return 0;
    int n_fds = 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message); got > 0 && cmsg; cmsg = CMSG_NXTHDR(&message, cmsg))
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                if (n_fds < REQUEST_FDS)
                    request->fds[n_fds++] = fd;
                else
                    close(fd);
            }
    if (got < 0 || (message.msg_flags & MSG_CTRUNC)) {
        free_request(request);
        if (got < 0)
            PyErr_SetFromErrno(PyExc_OSError);
        else
            PyErr_SetString(PyExc_RuntimeError, "a request of the pool with too many fds");
        return -1;
    }
    if ((size_t)got < sizeof header && read_exactly(sock, header + got, sizeof header - (size_t)got) != 1)
        goto truncated;
    size = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16 | (uint32_t)header[2] << 8 | header[3];
    if (size < sizeof fixed || read_exactly(sock, fixed, sizeof fixed) != 1)
        goto truncated;
    memcpy(&request->timeout, fixed, 8);
    memcpy(&request->wall, fixed + 8, 8);
    request->apps = fixed[16];
    request->n_inputs = (uint32_t)little_endian(fixed + 17, 4);
    request->source_length = little_endian(fixed + 21, 8);
    request->names_length = (uint32_t)little_endian(fixed + 29, 4);
    request->stdio = request->n_inputs > 0;
    if (size != sizeof fixed + 8ULL * request->n_inputs + request->names_length || n_fds != (request->stdio ? 2 : 3))
        goto truncated;
    request->inputs = (uint64_t *)calloc(request->n_inputs + 1, sizeof(uint64_t));
    request->names = (char *)malloc(request->names_length + 1);
    if (request->inputs == NULL || request->names == NULL) {
        free_request(request);
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t i = 0; i < request->n_inputs; i++) {
        unsigned char length[8];
        if (read_exactly(sock, length, 8) != 1)
            goto truncated;
        request->inputs[i] = little_endian(length, 8);
    }
    if (read_exactly(sock, request->names, request->names_length) != 1)
        goto truncated;
    return 1;

truncated:
    free_request(request);
    PyErr_SetString(PyExc_RuntimeError, "a malformed request from the pool");
    return -1;
}

/* The names as a tuple of str (decoded in the child: the worker holds no Python object of a request). */
static PyObject *program_names(const struct request *request) {
    Py_ssize_t count = 0;
    for (uint32_t i = 0; i < request->names_length; i++)
        count += request->names[i] == '\0';
    PyObject *names = PyTuple_New(request->names_length ? count + 1 : 0);
    const char *start = request->names, *end = request->names + request->names_length;
    for (Py_ssize_t i = 0; names && start <= end && i < PyTuple_GET_SIZE(names); i++) {
        const char *stop = (const char *)memchr(start, '\0', (size_t)(end - start));
        if (stop == NULL)
            stop = end;
        PyObject *name = PyUnicode_DecodeUTF8(start, stop - start, "strict");
        if (name == NULL) {
            Py_CLEAR(names);
            break;
        }
        PyTuple_SET_ITEM(names, i, name);
        start = stop + 1;
    }
    return names;
}

/* ---------------------------------------------------------------- one program process */
struct run {
    int status, timed_out, over_cpu, n_outputs;
    double seconds, cpu_seconds;
    long cpu, memory;
    int outputs[3];
    long long seen[3];
};

struct slot {                         /* what stays the same from one request to the next */
    int isolated, requests, replies, counter;
    long pid_max;
    const char *work;                 /* unisolated: the directory of the programs' work directories */
    long long output_limit;
};

/* A memfd holding `length` bytes of `inputs` from `offset`, copied by the kernel: they never enter
 * this process. -1 on an error. */
static int input_memfd(int inputs, uint64_t offset, uint64_t length) {
    int fd = memfd_create("stdin", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    off_t at = (off_t)offset;
    while (length) {
        ssize_t sent = sendfile(fd, inputs, &at, length);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0) {
            close(fd);
            return -1;
        }
        if (sent == 0)
            break;
        length -= (uint64_t)sent;
    }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

/* Forks the process of one run and watches it to its end. Returns 0 in this process (`run` filled in), -1
 * with a Python error set; 1 in the child, with `child` set to what worker.py's program process takes (a
 * child that cannot build it exits with 1, as that process does on any error, never back in the loop).
 * `stdin`: the input's memfd (a standard-input run), which this closes, or -1 (/dev/null). */
NOT_INLINED static int run_program(const struct slot *slot, const struct request *request, int stdin_fd, double deadline,
                       double cpu_end, struct run *run, PyObject **child) {
    int n_outputs = request->stdio ? 3 : 2, n = 1 + n_outputs + (request->stdio ? 0 : 2);
    int fds[MAX_FDS], high[MAX_FDS], fork_errno, pidfd;
    pid_t pid;
    double started;
    char workdir[4096] = "";
    static const char *const names[3] = {"stdout", "stderr", "status"};
    memset(run, 0, sizeof *run);
    run->n_outputs = n_outputs;
    for (int i = 0; i < MAX_FDS; i++)
        fds[i] = high[i] = -1;
    for (int i = 0; i < 3; i++)
        run->outputs[i] = -1;
    fds[0] = stdin_fd;
    if (!request->stdio) {
        fds[1 + n_outputs] = request->fds[1];
        fds[2 + n_outputs] = request->fds[2];
    }
    for (int i = 0; i < n_outputs; i++)
        if ((run->outputs[i] = fds[1 + i] = memfd_create(names[i], MFD_CLOEXEC)) < 0)
            goto os_error;
    if (stdin_fd < 0 && (fds[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
        goto os_error;
    if (slot->replies >= 0) {         /* the parent mounted this program's tmpfs */
        char ready = 0;
        if (read_exactly(slot->replies, &ready, 1) != 1 || ready != READY) {
            close(fds[0]);
            close_all(run->outputs, 3);
            PyErr_SetString(PyExc_RuntimeError, "no file system for the program: the worker's parent failed");
            return -1;
        }
    }
    if (slot->work != NULL) {         /* unisolated: a fresh work directory */
        unsigned char random[8];
        if (getrandom(random, sizeof random, 0) != sizeof random)
            goto os_error;
        int at = snprintf(workdir, sizeof workdir, "%s/", slot->work);
        for (int i = 0; i < 8 && at + 3 < (int)sizeof workdir; i++)
            at += snprintf(workdir + at, sizeof workdir - at, "%02x", random[i]);
        if (mkdir(workdir, 0700) < 0)
            goto os_error;
    }
    started = monotonic();
    for (int i = 0; i < n; i++)
        if ((high[i] = fcntl(fds[i], F_DUPFD, HIGH_FD + n)) < 0)
            goto os_error;
    run->cpu = (long)ceil(cpu_end - children_cpu());   /* RLIMIT_CPU counts whole seconds */
    if (slot->counter >= 0 && scramble_pids(slot->counter, slot->pid_max) < 0)
        goto os_error;
    PyOS_BeforeFork();
    pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        PyObject *copies = PyTuple_New(n);
        for (int i = 0; copies && i < n; i++)
            PyTuple_SET_ITEM(copies, i, PyLong_FromLong(high[i]));
        PyObject *names = copies ? program_names(request) : NULL;
        *child = names ? Py_BuildValue("(lNiKiiNz)", run->cpu, copies, request->fds[0],
                                       (unsigned long long)request->source_length, request->apps, request->stdio,
                                       names, workdir[0] ? workdir : NULL) : NULL;
        if (*child == NULL)
            _exit(1);
        return 1;
    }
    fork_errno = errno;
    PyOS_AfterFork_Parent();
    close_all(high, n);
    for (int i = 0; i < n; i++)
        high[i] = -1;
    close(fds[0]);
    fds[0] = -1;
    if (pid < 0) {
        errno = fork_errno;
        goto os_error;
    }

    /* Watch: the process's exit or the deadline, whichever comes first. */
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {                  /* (a kernel before 5.3) */
        int watch_errno = errno;
        killpg(pid, SIGKILL);
        kill_leftovers(slot->isolated, pid);
        close_all(run->outputs, 3);
        errno = watch_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (;;) {
        double left = deadline - monotonic();
        if (left < 0)
            left = 0;
        struct timespec wait = {(time_t)left, (long)((left - (time_t)left) * 1e9)};
        struct pollfd exited = {pidfd, POLLIN, 0};
        int ready = ppoll(&exited, 1, &wait, NULL);
        if (ready < 0 && errno == EINTR)
            continue;
        run->timed_out = ready == 0;
        break;
    }
    close(pidfd);
    if (run->timed_out)
        killpg(pid, SIGKILL);
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    while (wait4(pid, &run->status, 0, &usage) < 0 && errno == EINTR) {}
    run->seconds = monotonic() - started;
    kill_leftovers(slot->isolated, pid);
    for (int i = 0; i < n_outputs; i++) {
        struct stat info;
        if (fstat(run->outputs[i], &info) == 0)
            run->seen[i] = (long long)info.st_size;
    }
    run->over_cpu = children_cpu() > cpu_end;
    run->memory = (long)usage.ru_maxrss * 1024;
    run->cpu_seconds = seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
    if (slot->requests >= 0) {        /* no process of the program is left: the parent detaches its tmpfs */
        ssize_t put;
        while ((put = write(slot->requests, &DONE, 1)) < 0 && errno == EINTR) {}
        if (put != 1) {
            close_all(run->outputs, 3);
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    if (workdir[0]) {                 /* unisolated: isolation.remove_tree (whatever the program left there) */
        PyObject *removal = PyImport_ImportModule("bcoder.sandbox.isolation");
        PyObject *removed = removal ? PyObject_CallMethod(removal, "remove_tree", "s", workdir) : NULL;
        Py_XDECREF(removal);
        if (removed == NULL) {
            close_all(run->outputs, 3);
            return -1;
        }
        Py_DECREF(removed);
    }
    return 0;

os_error:
    PyErr_SetFromErrno(PyExc_OSError);
    close_all(fds, 1);
    close_all(run->outputs, 3);
    close_all(high, n);
    return -1;
}

/* ---------------------------------------------------------------- the reply */
#define REPORT_SIZE 512               /* bytes of JSON a report takes at most (its fields are bounded) */

/* Appends to `text` (of `size` bytes) at `*at`, which stays within it (a report that would not fit is
 * cut short, and the pool then fails to read the reply: it cannot happen with REPORT_SIZE). */
static void append(char *text, size_t size, size_t *at, const char *format, ...) {
    va_list values;
    va_start(values, format);
    int wrote = *at < size ? vsnprintf(text + *at, size - *at, format, values) : 0;
    va_end(values);
    *at = wrote < 0 ? *at : (*at + (size_t)wrote < size ? *at + (size_t)wrote : size - 1);
}

/* Bytes of output `i` (stdout, stderr, status lines) of `run` that the pool gets: what the program wrote, to a limit. */
static long long sent_size(const struct slot *slot, const struct run *run, int i) {
    long long limit = i < 2 ? slot->output_limit : STATUS_LIMIT;
    return run->seen[i] < limit ? run->seen[i] : limit;
}

/* The report of a run as JSON (worker.py's docstring). */
NOT_INLINED static void append_report(char *text, size_t size, size_t *at, int first, const struct slot *slot,
                          const struct run *run) {
    const char *status = "ok", *error_type = "";
    char message[64] = "", name[32];
    int signalled = WIFSIGNALED(run->status) ? WTERMSIG(run->status) : 0;
    if (run->timed_out || run->over_cpu || signalled == SIGXCPU ||
        (signalled == SIGKILL && run->cpu_seconds >= (double)run->cpu)) {
        status = "timeout";
        error_type = "Timeout";
        snprintf(message, sizeof message, "time limit exceeded");
    } else if (signalled) {
        signal_name(signalled, name, sizeof name);
        status = "crash";
        error_type = name;
        snprintf(message, sizeof message, "killed by %s", name);
    } else if (WEXITSTATUS(run->status) != 0) {
        status = "crash";
        error_type = "ProgramExited";
        snprintf(message, sizeof message, "exited with code %d", WEXITSTATUS(run->status));
    }
    append(text, size, at, "%s{\"status\": \"%s\", \"error_type\": \"%s\", \"message\": \"%s\", \"seconds\": %.4f, "
           "\"memory\": %ld, \"seen\": [", first ? "" : ", ", status, error_type, message, run->seconds, run->memory);
    for (int i = 0; i < run->n_outputs; i++)
        append(text, size, at, i ? ", %lld" : "%lld", run->seen[i]);
    append(text, size, at, "], \"sizes\": [");
    for (int i = 0; i < run->n_outputs; i++)
        append(text, size, at, i ? ", %lld" : "%lld", sent_size(slot, run, i));
    append(text, size, at, "]}");
}

static int send_all(int sock, const char *data, size_t size) {
    while (size) {
        ssize_t sent = send(sock, data, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0)
            return -1;
        data += sent;
        size -= (size_t)sent;
    }
    return 0;
}

/* {"runs": [report, ...]}, then each run's outputs, the sizes its report says, copied from the memfds
 * by the kernel (sendfile: never read here); a file that shrank is padded with zeros. */
NOT_INLINED static int send_reply(int sock, const struct slot *slot, const struct run *runs, int n_runs, int capacity) {
    size_t size = 64 + REPORT_SIZE * (size_t)capacity, at = 4;     /* (sized by the request, not by the program) */
    char *text = (char *)malloc(size);
    if (text == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    append(text, size, &at, "{\"runs\": [");
    for (int i = 0; i < n_runs; i++)
        append_report(text, size, &at, i == 0, slot, &runs[i]);
    append(text, size, &at, "]}");
    uint32_t length = (uint32_t)at - 4;
    unsigned char header[4] = {(unsigned char)(length >> 24), (unsigned char)(length >> 16),
                               (unsigned char)(length >> 8), (unsigned char)length};
    memcpy(text, header, 4);
    int failed = send_all(sock, text, at);
    clear_and_free(text, size);
    static const char zeros[4096] = {0};
    for (int i = 0; i < n_runs && !failed; i++) {
        for (int j = 0; j < runs[i].n_outputs && !failed; j++) {
            long long count = sent_size(slot, &runs[i], j);
            off_t offset = 0;
            while (offset < count && !failed) {
                ssize_t sent = sendfile(sock, runs[i].outputs[j], &offset, (size_t)(count - offset));
                if (sent < 0 && errno == EINTR)
                    continue;
                if (sent < 0) {
                    failed = 1;
                } else if (sent == 0) {
                    for (long long left = count - offset; left > 0 && !failed; left -= (long long)sizeof zeros)
                        failed = send_all(sock, zeros, left < (long long)sizeof zeros ? (size_t)left : sizeof zeros);
                    break;
                }
            }
        }
    }
    if (failed)
        PyErr_SetFromErrno(PyExc_OSError);
    return failed ? -1 : 0;
}

PyDoc_STRVAR(serve_doc,
"serve(sock, isolated, file_systems, pid_counter, pid_max, work, output_limit)\n\n"
"The worker's loop: takes each request of the pool on the socket `sock`, forks the program's process\n"
"of each run, watches it to its end and replies (worker.py's docstring has the protocol). Returns None\n"
"once the pool has closed the socket. In a program's process it returns, once, what that process\n"
"takes: (cpu, high, source, source length, apps, stdio, names, workdir) with `cpu` the whole CPU\n"
"seconds left to the run (for its RLIMIT_CPU), `high` copies of [stdin, stdout, stderr, *status or\n"
"channel] above fd 64 (for arrange_fds), `source` the fd of the program's sealed memfd, `names` a\n"
"tuple of the names the tests take from it, and `workdir` its work directory (unisolated) or None.\n\n"
"isolated: this process is its programs' PID-namespace init. file_systems: (requests, replies) fds of\n"
"the parent that mounts each program's tmpfs (READY is awaited before the fork, DONE sent once no\n"
"process of the program is left), or None. pid_counter: an fd of ns_last_pid to set at random before\n"
"each fork (pid_max: /proc/sys/kernel/pid_max), or -1. work: unisolated, the directory where each\n"
"program gets a work directory of its own (removed after it), or None. output_limit: bytes of stdout\n"
"and of stderr sent on.");

static PyObject *py_serve(PyObject *self, PyObject *args) {
    int sock;
    PyObject *file_systems;
    struct slot slot;
    memset(&slot, 0, sizeof slot);
    slot.requests = slot.replies = -1;
    if (!PyArg_ParseTuple(args, "ipOilzL", &sock, &slot.isolated, &file_systems, &slot.counter, &slot.pid_max,
                          &slot.work, &slot.output_limit))
        return NULL;
    if (file_systems != Py_None && !PyArg_ParseTuple(file_systems, "ii", &slot.requests, &slot.replies))
        return NULL;
    for (;;) {
        struct request request;
        int got = receive_request(sock, &request);
        if (got <= 0)
            return got == 0 ? Py_NewRef(Py_None) : NULL;
        double deadline = monotonic() + request.wall;
        /* The CPU time the run's processes share: all of them, each counted once it is gone (a
         * process's RLIMIT_CPU counts its own only, and whole seconds). */
        double cpu_end = children_cpu() + request.timeout;
        uint32_t n_runs = request.stdio ? request.n_inputs : 1, done = 0;
        struct run *runs = (struct run *)calloc(n_runs, sizeof(struct run));
        if (runs == NULL) {
            free_request(&request);
            return PyErr_NoMemory();
        }
        int failed = 0;
        uint64_t offset = 0;
        PyObject *child = NULL;
        while (done < n_runs) {
            int stdin_fd = -1;
            if (request.stdio && (stdin_fd = input_memfd(request.fds[1], offset, request.inputs[done])) < 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                failed = 1;
                break;
            }
            offset += request.stdio ? request.inputs[done] : 0;
            int ran = run_program(&slot, &request, stdin_fd, deadline, cpu_end, &runs[done], &child);
            if (ran == 1) {           /* the program's process: its memory is its own copy, where the */
                free(runs);           /* lengths of the run's other inputs are the tests' */
                clear_and_free(request.inputs, sizeof(uint64_t) * (request.n_inputs + 1));
                free(request.names);
                return child;
            }
            if (ran < 0) {
                failed = 1;
                break;
            }
            done++;
            const struct run *last = &runs[done - 1];
            if (last->timed_out || last->over_cpu || last->status != 0)
                break;                /* a standard-input run stops at the first input that does not end cleanly */
        }
        free_request(&request);
        if (!failed)
            failed = send_reply(sock, &slot, runs, (int)done, (int)n_runs) < 0;
        for (uint32_t i = 0; i < done; i++)
            close_all(runs[i].outputs, 3);
        clear_and_free(runs, sizeof(struct run) * n_runs);
        clear_stack();
        if (failed)
            return NULL;
    }
}

static PyMethodDef methods[] = {
    {"serve", py_serve, METH_VARARGS, serve_doc},
    {"kill_leftovers", py_kill_leftovers, METH_VARARGS,
     "kill_leftovers(isolated): kills and reaps every process the programs started (see the source)."},
    {"scramble_pids", py_scramble_pids, METH_VARARGS,
     "scramble_pids(counter, pid_max): sets the PID namespace's next pid (`counter`: an fd of ns_last_pid) at\n"
     "random over 2 .. pid_max - 1, as serve does before each fork."},
    {"signal_name", py_signal_name, METH_VARARGS, "signal_name(number): as signal.Signals names it, or \"signal N\"."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_process",
                                    "The sandbox worker's loop, in C (csrc/sandbox_process.c).", -1, methods};

PyMODINIT_FUNC PyInit__process(void) { return PyModule_Create(&module); }
